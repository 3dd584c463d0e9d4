#!/bin/bash
# The OLMoE SFT (or DPO) on several nodes with plain torchrun, no Slurm: run this on every node, from the repository
# root, with that node's rank and node 0's address:
#
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash recipes/olmoe-1b-7b/launch/torchrun.sh [key=value ...]
#   NNODES=4 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash recipes/olmoe-1b-7b/launch/torchrun.sh [key=value ...]   # ...
#
# DeepSpeed (ZeRO, expert parallelism) comes from the recipe's `parallel:` section, so no accelerate config is needed.
# The same notes as slurm.sbatch apply (global batch, data cache, checkpoints). tests/test_multinode.py runs this file
# as it is, with two local "nodes" on CPU processes.
set -euo pipefail

STAGE=${STAGE:-sft}
exec torchrun --nnodes "${NNODES:-4}" --node_rank "${NODE_RANK:?set NODE_RANK (0..NNODES-1) on each node}" \
  --nproc_per_node "${GPUS_PER_NODE:-8}" \
  --master_addr "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}" --master_port "${MASTER_PORT:-29500}" \
  -m "adapt.stages.$STAGE" --config "${RECIPE:-recipes/olmoe-1b-7b/$STAGE.yaml}" "$@"

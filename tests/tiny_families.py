"""Tiny configs of every supported MoE family (adapt/config/families.py), shared by the family tests and the
expert-parallel parity script: 8 routed experts, top-2, 2 layers; where a family has dense layers, the first is
dense (the MoE layer is layer 1). tests/test_families.py checks that they cover the family table."""

COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=128)
TINY = {
    "olmoe": dict(COMMON, intermediate_size=64, num_experts=8, num_experts_per_tok=2),
    "qwen3_moe": dict(COMMON, intermediate_size=64, moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2,
                      mlp_only_layers=[0], norm_topk_prob=True),  # Qwen3-30B-A3B's (the config's default: False)
    "qwen2_moe": dict(COMMON, intermediate_size=64, moe_intermediate_size=16, shared_expert_intermediate_size=32,
                      num_experts=8, num_experts_per_tok=2, mlp_only_layers=[0]),
    "mixtral": dict(COMMON, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2),
    "deepseek_v3": dict(COMMON, num_key_value_heads=4, intermediate_size=64, moe_intermediate_size=16,
                        n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=2, topk_group=1,
                        first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
                        qk_nope_head_dim=8, v_head_dim=8),
    "glm4_moe": dict(COMMON, intermediate_size=64, moe_intermediate_size=16, n_routed_experts=8,
                     num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1, first_k_dense_replace=1),
    "gpt_oss": dict(COMMON, intermediate_size=32, head_dim=8, num_local_experts=8, num_experts_per_tok=2,
                    sliding_window=16),
    "granitemoe": dict(COMMON, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2),
}
MOE_LAYERS = {name: [1] if {"mlp_only_layers", "first_k_dense_replace"} & set(cfg) else [0, 1]
              for name, cfg in TINY.items()}

"""Losses the libraries do not provide, computed from tensors the model records."""

from adapt.losses.router import RouterStats, load_balancing_loss, router_stats, router_z_loss

__all__ = ["RouterStats", "load_balancing_loss", "router_stats", "router_z_loss"]

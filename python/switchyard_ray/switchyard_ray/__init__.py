"""Switchyard's two tiers on Ray. Ray places, finds and restarts the processes; tensors go
directly between Switchyard processes over their own sockets, never through Ray.

    from switchyard_ray import TwoTier
    deployment = TwoTier(binary, model, workers=2, kv_memory="4GiB")
    deployment.start()           # attention workers on nodes with {"attention_host": 1}, then tier 1
    # TwoTier(binary, model, workers=0, expert_hosts=2): expert hosts on nodes with {"expert_host": 1}
    url = deployment.url()       # tier 1's OpenAI-compatible server
    ...
    deployment.stop()
"""
from .process import SwitchyardProcess, ProcessGone
from .deployment import AttentionWorkerActor, ExpertWorkerActor, TierOneActor, TwoTier

__all__ = ["SwitchyardProcess", "ProcessGone", "AttentionWorkerActor", "ExpertWorkerActor", "TierOneActor", "TwoTier"]

"""Ray actors: policy (DeepSpeed), rollout (vLLM), reference, reward, and the ActorGroup. See docs/architecture.md."""

"""A custom tuner: train only the MLP of the last decoder layer(s); every other parameter is frozen.

    python -m raylhf.sft --plugins examples/plugins/tuner_last_mlp.py --policy.tuner.type last_mlp \
        --policy.tuner.kwargs '{num_layers: 1}'

ms-swift's interface: static ``prepare_model(args, model) -> model``, ``save_pretrained(model, save_directory,
state_dict=None, safe_serialization=True, **kwargs)`` and ``from_pretrained(model, model_id, **kwargs) -> model``.
``args.<key>`` reads ``policy.tuner.kwargs``. The model stays a plain HF model, so weight sync and exports need
nothing more (an adapter tuner built on peft is merged for them; any other may add an ``export_params`` method).
"""

from raylhf.plugins import Tuner, register_tuner


@register_tuner("last_mlp")
class LastMLPTuner(Tuner):
    @staticmethod
    def prepare_model(args, model):
        n = int(getattr(args, "num_layers", 1))  # policy.tuner.kwargs.num_layers
        total = model.config.num_hidden_layers
        keep = tuple(f"layers.{i}.mlp." for i in range(total - n, total))
        for name, p in model.named_parameters():
            p.requires_grad_(any(k in name for k in keep))
        return model

    @staticmethod
    def save_pretrained(model, save_directory, state_dict=None, safe_serialization=True, **kwargs):
        model.save_pretrained(save_directory, state_dict=state_dict, safe_serialization=safe_serialization)

    @staticmethod
    def from_pretrained(model, model_id, **kwargs):
        return type(model).from_pretrained(model_id, dtype=next(model.parameters()).dtype)

"""A custom optimizer factory: SGD with momentum and a step-decay learning-rate schedule.

    python -m raylhf.sft --plugins examples/plugins/optimizer_sgd.py --policy.optimizer sgd_step_decay \
        --policy.optimizer_kwargs '{momentum: 0.9, decay_every: 2, decay: 0.5}'

The factory has ms-swift's shape ``factory(args, model, dataset) -> (optimizer, scheduler)``: ``args`` gives
``lr`` (also ``learning_rate``), ``weight_decay``, ``total_steps`` and ``optimizer_kwargs``
(``policy.optimizer_kwargs``); ``dataset`` is None. Return ``None`` as the scheduler to get the default schedule
(``policy.lr_scheduler`` / ``policy.warmup_steps``).
"""

import torch

optimizers_map = {}  # ms-swift's table name: raylhf collects it when the file loads


def create_sgd_step_decay(args, model, dataset):
    """SGD (momentum ``momentum``, default 0.9) over the trainable parameters; the learning rate is multiplied by
    ``decay`` (default 0.5) every ``decay_every`` (default 2) optimizer steps."""
    kw = args.optimizer_kwargs
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=args.learning_rate, momentum=float(kw.get("momentum", 0.9)),
                          weight_decay=args.weight_decay)
    every, decay = int(kw.get("decay_every", 2)), float(kw.get("decay", 0.5))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=every, gamma=decay)
    return opt, sched


optimizers_map["sgd_step_decay"] = create_sgd_step_decay

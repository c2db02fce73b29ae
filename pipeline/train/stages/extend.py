"""``extend``: context-extension fine-tune of ``init_from`` (a checkpoint), the pretraining loss.

What changes is the config: a new positional rule (``model.pos``), a longer ``task.train_len``,
optionally LongLoRA's S2-Attn (``model.attention.train=shifted_sparse``) with ``lora.enabled=true``.
"""

from __future__ import annotations

from pipeline.config.stage import STAGES
from pipeline.train.stages.pretrain import Pretrain


@STAGES.register()
class Extend(Pretrain):
    name = "extend"
    needs_init = True

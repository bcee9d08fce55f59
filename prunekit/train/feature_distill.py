"""Feature distillation: the unpruned teacher's intermediate features (plus its logits) teach the pruned student.

Forward hooks capture the outputs of named layers in both networks; where a pruned
student layer is narrower than the teacher's, a learned 1x1 conv (4-D features) or linear
(2-D features) adapter maps student width to teacher width before the MSE. Implements the
distiller protocol of ``prunekit.train.fit``: ``.parameters()`` and
``.loss(inputs, targets, student_output, hard_loss)``. Call ``.close()`` to remove the hooks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._inputs import first_tensor, run_model
from ..errors import ConfigError, InputError
from .distill import teacher_forward


def logit_distillation_loss(student_logits, teacher_logits, hard_loss, *, temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * hard_loss (Hinton et al. 2015)."""
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")
    return alpha * t * t * kl + (1.0 - alpha) * hard_loss


class _Capture:
    """Forward hook storing the latest output of one module."""

    def __init__(self, module: nn.Module):
        self.value: Optional[torch.Tensor] = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        # a copy: a following in-place op (ReLU(inplace=True)) would otherwise overwrite what was captured
        self.value = first_tensor(output).clone()

    def remove(self) -> None:
        self.handle.remove()
        self.value = None


def make_adapter(student_shape: Sequence[int], teacher_shape: Sequence[int], name: str) -> nn.Module:
    """Identity when widths match, else a 1x1 conv / linear from student width to teacher width."""
    s, t = tuple(student_shape), tuple(teacher_shape)
    if len(s) != len(t) or s[2:] != t[2:]:
        raise InputError(
            f"feature distillation layer {name!r}: student features {s} and teacher features {t} differ beyond the "
            "channel axis; pick layers whose spatial / sequence sizes match"
        )
    if s[1] == t[1]:
        return nn.Identity()
    if len(s) == 2:
        return nn.Linear(s[1], t[1], bias=False)
    if len(s) == 3:
        return nn.Conv1d(s[1], t[1], 1, bias=False)
    if len(s) == 4:
        return nn.Conv2d(s[1], t[1], 1, bias=False)
    raise InputError(f"feature distillation layer {name!r}: cannot adapt features of rank {len(s)} (shape {s})")


class FeatureDistiller(nn.Module):
    """Loss = logit distillation (``alpha``, ``temperature``) + ``weight`` * sum over layers of MSE(adapter(student_f), teacher_f).

    ``layers``: names of modules present in both models (``model.named_modules()``), or a
    mapping ``{student_name: teacher_name}``. ``example_inputs`` (recommended) lets the
    adapters be sized by one probe forward; the adapters are this module's parameters, so
    pass ``distiller.parameters()`` to the optimiser (``fit`` does).
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, layers: Union[Sequence[str], Mapping[str, str]], *,
                 weight: float = 1.0, temperature: float = 4.0, alpha: float = 0.5, example_inputs: Any = None):
        super().__init__()
        if not layers:
            raise ConfigError("FeatureDistiller needs at least one layer name in `layers`")
        if temperature <= 0 or not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"FeatureDistiller needs temperature > 0 and alpha in [0, 1], got {temperature}, {alpha}")
        self.pairs: Dict[str, str] = dict(layers) if isinstance(layers, Mapping) else {n: n for n in layers}
        self.weight = float(weight)  # multiplier of the feature term
        self.temperature = float(temperature)  # softening of the logit term
        self.alpha = float(alpha)  # share of the logit KD term vs the hard loss
        self._teacher = [teacher]  # a list keeps the teacher out of this module's parameters; never mutated
        s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
        self._student_caps = {s: _Capture(_find(s_mods, s, "student")) for s in self.pairs}
        self._teacher_caps = {s: _Capture(_find(t_mods, t, "teacher")) for s, t in self.pairs.items()}
        shapes = self._probe(student, example_inputs) if example_inputs is not None else self._widths(s_mods, t_mods)
        self.adapters = nn.ModuleDict({_key(s): make_adapter(ss, ts, s) for s, (ss, ts) in shapes.items()})
        self.to(next(student.parameters()).device)

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def _probe(self, student: nn.Module, example_inputs: Any) -> Dict[str, tuple]:
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                run_model(student, example_inputs)
            with teacher_forward(self.teacher):
                run_model(self.teacher, example_inputs)
        finally:
            student.train(was_training)
        return {s: (tuple(self._student_caps[s].value.shape), tuple(self._teacher_caps[s].value.shape)) for s in self.pairs}

    def _widths(self, s_mods, t_mods) -> Dict[str, tuple]:
        """Shapes from module attributes (no probe): only the channel axis is known, rank from the layer type."""
        out = {}
        for s, t in self.pairs.items():
            out[s] = (_width_shape(s_mods[s], s), _width_shape(t_mods[t], t))
        return out

    def feature_loss(self) -> torch.Tensor:
        """Sum over layers of MSE between adapted student features and teacher features (latest forward of each)."""
        terms = []
        for s in self.pairs:
            fs, ft = self._student_caps[s].value, self._teacher_caps[s].value
            if fs is None or ft is None:
                raise InputError(f"feature distillation layer {s!r} produced no output in the last forward pass")
            terms.append(F.mse_loss(self.adapters[_key(s)](fs), ft.detach()))
        return torch.stack(terms).sum()

    def loss(self, inputs: Any, targets: torch.Tensor, student_output: Any, hard_loss: torch.Tensor) -> torch.Tensor:
        """The distiller protocol: run the teacher on ``inputs`` and combine logit + feature terms with ``hard_loss``."""
        with teacher_forward(self.teacher):
            teacher_logits = first_tensor(run_model(self.teacher, inputs))
        total = logit_distillation_loss(first_tensor(student_output), teacher_logits, hard_loss,
                                        temperature=self.temperature, alpha=self.alpha)
        return total + self.weight * self.feature_loss()

    def close(self) -> None:
        """Remove every forward hook from student and teacher."""
        for cap in list(self._student_caps.values()) + list(self._teacher_caps.values()):
            cap.remove()

    def __enter__(self) -> "FeatureDistiller":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _key(name: str) -> str:
    return name.replace(".", "__") or "_root"


def _find(modules: Dict[str, nn.Module], name: str, which: str) -> nn.Module:
    if name not in modules:
        known = ", ".join(n for n in modules if n)[:400]
        raise ConfigError(f"feature distillation layer {name!r} is not a module of the {which}; known modules: {known}")
    return modules[name]


def _width_shape(module: nn.Module, name: str) -> tuple:
    for attr, rank in (("out_channels", 4), ("num_features", 4), ("out_features", 2)):
        if hasattr(module, attr):
            if isinstance(module, (nn.Conv1d, nn.BatchNorm1d)):
                rank = 3 if isinstance(module, nn.Conv1d) else 2
            return (1, int(getattr(module, attr))) + (1,) * (rank - 2)
    raise ConfigError(f"cannot infer the output width of layer {name!r} ({type(module).__name__}); "
                      "pass example_inputs to FeatureDistiller so it can probe the shapes")


@dataclass
class FeatureDistillConfig:
    """Recipe form: ``distill: {layers: [features.3, features.7], weight: 1.0, temperature: 4, alpha: 0.5}``."""

    layers: List[str] = field(default_factory=list)  # module names present in teacher and student (empty: logits only)
    weight: float = 1.0  # multiplier of the feature MSE term
    temperature: float = 4.0  # softmax temperature of the logit term
    alpha: float = 0.5  # share of logit KD vs the hard label loss

    def build(self, teacher: nn.Module, student: nn.Module, example_inputs: Any = None):
        """A FeatureDistiller, or the logit-only distiller when no layers are named."""
        if self.layers:
            return FeatureDistiller(teacher, student, self.layers, weight=self.weight, temperature=self.temperature,
                                    alpha=self.alpha, example_inputs=example_inputs)
        return LogitOnly(teacher, temperature=self.temperature, alpha=self.alpha)


class LogitOnly:
    """Logit distillation alone (used when no feature layers are named); same protocol as FeatureDistiller."""

    def __init__(self, teacher: nn.Module, *, temperature: float = 4.0, alpha: float = 0.5):
        self.teacher, self.temperature, self.alpha = teacher, float(temperature), float(alpha)

    def parameters(self):
        return iter(())

    def loss(self, inputs, targets, student_output, hard_loss):
        with teacher_forward(self.teacher):
            t = first_tensor(run_model(self.teacher, inputs))
        return logit_distillation_loss(first_tensor(student_output), t, hard_loss,
                                       temperature=self.temperature, alpha=self.alpha)

    def close(self) -> None:
        pass

"""The plan before surgery: what structured pruning would remove, editable, JSON-able, and applied in one call.

``prunekit.plan`` (:func:`~prunekit.structured.api.plan_structured`) traces the model, groups coupled
channels, scores and selects them, and returns a :class:`Plan` without changing the model. A plan prints as a table (one row per group: layers,
channels, how many go, the predicted size), converts to / from JSON, can be edited
(:meth:`Plan.drop` / :meth:`Plan.keep` channels of a group by index, :meth:`Plan.set_ratio`) and
:meth:`Plan.apply` performs it, on the model it was made on or on a freshly built one of the same
architecture. ``prunekit.prune`` is ``plan`` + ``apply``.

A plan carries everything it needs to be applied and edited: for every layer axis (member) the group
atom of each position, for every reshape attribute (``num_heads``, ``unflattened_size[i]``) its atoms,
the parameter slices, parameter shapes and per-layer MACs (recorded by :mod:`.plan_build`), so a plan read from JSON predicts sizes
and applies without tracing the model again.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, PruningError
from .budget import macs_after
from .plan import get_plan, merge_plans, set_plan
from .remove import PLAN_VERSION, empty_plan

PLAN_FORMAT = "prunekit-plan"
PLAN_FORMAT_VERSION = 1
UNITS = {"channels": "channels", "blocks": "blocks", "inputs": "input features"}


@dataclass
class PlanGroup:
    """One row of a plan: units (channels, heads, blocks or input features) scored and removed together.

    ``remove`` lists unit indices ``0 .. size-1`` (a channel group's units are its atoms in order; for the
    single-producer group of a Conv / Linear, unit ``i`` is output channel ``i``).
    """

    index: int
    kind: str  # "channels" | "blocks" | "inputs"
    layers: List[str]  # producing layers (channels), candidate blocks (blocks), the Linear (inputs)
    members: List[Tuple[str, str, str, int]]  # (module, layer type, axis kind, positions)
    size: int
    remove: List[int] = field(default_factory=list)
    scores: Optional[List[float]] = None
    reason: Optional[str] = None  # why the whole group is left out (None: prunable)
    frozen: Dict[int, str] = field(default_factory=dict)  # unit -> why it must stay
    divisions: List[List[List[int]]] = field(default_factory=list)  # units per division row (equal removal per row)

    @property
    def prunable(self) -> List[int]:
        if self.reason is not None:
            return []
        return [i for i in range(self.size) if i not in self.frozen]

    @property
    def kept(self) -> int:
        return self.size - len(self.remove)

    def to_dict(self) -> Dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "layers": list(self.layers),
                "members": [list(m) for m in self.members], "size": self.size, "remove": list(self.remove),
                "scores": None if self.scores is None else [float(s) for s in self.scores], "reason": self.reason,
                "frozen": {str(k): v for k, v in self.frozen.items()}, "divisions": self.divisions}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PlanGroup":
        try:
            return cls(index=int(d["index"]), kind=str(d["kind"]), layers=[str(n) for n in d["layers"]],
                       members=[tuple(m) for m in d.get("members", [])], size=int(d["size"]),
                       remove=[int(i) for i in d.get("remove", [])], scores=d.get("scores"), reason=d.get("reason"),
                       frozen={int(k): str(v) for k, v in (d.get("frozen") or {}).items()},
                       divisions=[[[int(i) for i in row] for row in div] for div in d.get("divisions") or []])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"plan group entry is malformed ({type(exc).__name__}: {exc}); the plan is damaged") \
                from None


class _Chooser:
    """A plan group seen through the attributes structured.select's choosing functions read."""

    def __init__(self, group: PlanGroup):
        self.atoms = np.arange(group.size, dtype=np.int64)
        self.frozen = dict(group.frozen)
        self.reason = group.reason
        self.divisions = [np.asarray(d, dtype=np.int64) for d in group.divisions]
        self.prunable = np.asarray(group.prunable, dtype=np.int64)


class Plan:
    """What a structured pruning removes, per group; see the module docstring.

    Build one with ``prunekit.plan(model, example_inputs, **spec_fields)`` (or :meth:`from_json`), read
    :attr:`groups` and :meth:`predicted`, edit, then ``plan.apply(model)``.
    """

    def __init__(self, granularity: str, groups: List[PlanGroup], spec: Dict[str, Any], layout: Dict[str, Any]):
        self.granularity = granularity
        self.groups = groups
        self.spec = spec  # the PruneSpec fields that were given (JSON-able)
        self._layout = layout  # members / patches / params / macs: what apply and predicted() need

    # --- reading --------------------------------------------------------------------------------------

    @property
    def removed(self) -> Dict[int, List[int]]:
        """Group index -> unit indices to remove, for every group that loses something."""
        return {g.index: list(g.remove) for g in self.groups if g.remove}

    @property
    def latency(self) -> Optional[Dict[str, Any]]:
        """With ``latency_target``: target, dense and predicted ms, per layer predicted ms and widths, per group the
        kept width (see :mod:`prunekit.structured.latency`); None otherwise."""
        return self._layout.get("latency")

    def group(self, index: int) -> PlanGroup:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) < len(self.groups):
            raise ConfigError(f"group index {index!r} is out of range: this plan has {len(self.groups)} groups "
                              f"(0..{len(self.groups) - 1})")
        return self.groups[int(index)]

    def predicted(self) -> Dict[str, Any]:
        """Parameters and MACs before and after this plan (from the traced shapes; no model needed)."""
        lay = self._layout
        shapes = {k: list(v) for k, v in lay["param_shapes"].items()}
        before_params = sum(int(np.prod(s)) if s else 1 for s in shapes.values())
        if self.granularity == "channel":
            keep = self._keep_masks()
            kept = {tuple(key.split("\x00")): float(mask.mean()) if len(mask) else 1.0 for key, mask in keep.items()}
            after = {k: list(v) for k, v in shapes.items()}
            for key, slices in lay["param_slices"].items():
                if key not in keep:
                    continue
                n_kept = int(keep[key].sum())
                for pname, dim, imap in slices:
                    if pname in after and dim < len(after[pname]):
                        if isinstance(imap, dict):  # a grouped convolution's input axis: per group
                            n = n_kept // int(imap["per_group"])
                        else:
                            n = n_kept if imap is None else n_kept * len(imap[0])
                        after[pname][dim] = min(after[pname][dim], n)
            after_params = sum(int(np.prod(s)) if s else 1 for s in after.values())
            after_macs = macs_after(lay["macs_total"], lay["macs_layers"], kept, set(lay["grouped"]),
                                    lay.get("macs_width_linear"))
            gone = self._removed_atoms()
            for op in lay.get("ops", []):
                frac = float(np.prod([sum(a not in gone for a in f) / max(1, len(f)) for f in op["factors"]]))
                after_macs -= op["macs"] * (1.0 - frac)
        elif self.granularity == "block":
            gone = {self.groups[0].layers[i] for i in self.groups[0].remove} if self.groups else set()
            after_params = before_params - sum(n for b, n in lay["block_params"].items() if b in gone)
            after_macs = lay["macs_total"] - sum(m for name, m in lay["macs_layers"].items()
                                                 if any(name == b or name.startswith(b + ".") for b in gone))
        else:  # input features
            g = self.groups[0]
            out_features = lay["input_out_features"]
            after_params = before_params - len(g.remove) * out_features
            linear_macs = lay["macs_layers"].get(g.layers[0], 0)
            after_macs = lay["macs_total"] - linear_macs * (len(g.remove) / max(1, g.size))
        return {"params_before": int(before_params), "params_after": int(after_params),
                "macs_before": int(lay["macs_total"]), "macs_after": int(round(after_macs))}

    # --- editing --------------------------------------------------------------------------------------

    def drop(self, group: int, units: Sequence[int]) -> "Plan":
        """Also remove ``units`` (indices within the group) of ``group``; returns the plan."""
        g = self.group(group)
        self._set_remove(g, sorted(set(g.remove) | set(self._units(g, units))))
        return self

    def keep(self, group: int, units: Sequence[int]) -> "Plan":
        """Keep ``units`` of ``group`` (they are taken off its removal list); returns the plan."""
        g = self.group(group)
        keep = set(self._units(g, units, check_frozen=False))
        self._set_remove(g, [i for i in g.remove if i not in keep])
        return self

    def set_remove(self, group: int, units: Sequence[int]) -> "Plan":
        """Remove exactly ``units`` of ``group``; returns the plan."""
        g = self.group(group)
        self._set_remove(g, sorted(set(self._units(g, units))))
        return self

    def set_ratio(self, group: int, ratio: float) -> "Plan":
        """Remove the lowest-scoring ``ratio`` of ``group``'s units (its frozen units stay); returns the plan."""
        from ..spec import _ratio
        from .select import choose, local_count, round_count

        _ratio(ratio, "ratio")
        g = self.group(group)
        if g.reason is not None:
            raise ConfigError(f"group {g.index} is left out ({g.reason}); it cannot lose {UNITS[g.kind]}")
        if g.scores is None:
            raise ConfigError(f"group {g.index} has no scores (the plan was made without them); edit it with "
                              "drop / keep / set_remove")
        chooser = _Chooser(g)
        count = round_count(chooser, local_count(chooser, float(ratio)), self.spec.get("round_to"))
        removed = choose(chooser, np.asarray(g.scores, dtype=float), count)
        self._set_remove(g, [int(i) for i in removed.tolist()])
        return self

    def _units(self, g: PlanGroup, units: Sequence[int], check_frozen: bool = True) -> List[int]:
        if isinstance(units, (int, np.integer)):
            units = [int(units)]
        out = []
        for u in units:
            if isinstance(u, bool) or not isinstance(u, (int, np.integer)) or not 0 <= int(u) < g.size:
                raise ConfigError(f"group {g.index} has {g.size} {UNITS[g.kind]} (0..{g.size - 1}); got index {u!r}")
            if check_frozen and int(u) in g.frozen:
                raise ConfigError(f"{UNITS[g.kind]} {int(u)} of group {g.index} must stay: {g.frozen[int(u)]}")
            out.append(int(u))
        return out

    def _set_remove(self, g: PlanGroup, remove: List[int]) -> None:
        if remove and g.reason is not None:
            raise ConfigError(f"group {g.index} is left out ({g.reason}); it cannot lose {UNITS[g.kind]}")
        if g.kind != "blocks" and len(remove) >= g.size:
            raise ConfigError(f"group {g.index} would lose all of its {g.size} {UNITS[g.kind]}; keep at least one")
        for div in g.divisions:
            lost = {sum(u in set(remove) for u in row) for row in div}
            if len(lost) > 1:
                raise ConfigError(f"group {g.index} is split into {len(div)} equal blocks (grouped convolution / "
                                  f"chunk): each must lose the same number of {UNITS[g.kind]}; got {sorted(lost)}")
            if any(sum(u in set(remove) for u in row) >= len(row) for row in div):
                raise ConfigError(f"group {g.index}: every block of a grouped layer must keep at least one channel")
        g.remove = sorted(remove)

    # --- applying -------------------------------------------------------------------------------------

    def step(self) -> Dict[str, Any]:
        """The plan step the model records (``get_plan``) and a checkpoint stores, without layer slicing records."""
        step = empty_plan()
        if self.granularity == "channel":
            step["modules"] = {m: {"type": self._layout["types"].get(m), "keep": {k: v.tolist() for k, v in kinds.items()}}
                               for m, kinds in self._keeps().items()}
            step["attributes"] = self._attributes()
            step["groups"] = {str(g.index): len(g.remove) for g in self.groups if g.remove}
            if self._layout.get("macs_search"):
                step["macs"] = dict(self._layout["macs_search"])
            if self._layout.get("latency"):
                step["latency"] = self._layout["latency"]
        elif self.granularity == "block":
            g = self.groups[0]
            step["removed_blocks"] = sorted(g.layers[i] for i in g.remove)
            step["block_scores"] = dict(zip(g.layers, [float(s) for s in g.scores or []]))
        else:
            g = self.groups[0]
            step["input_features"] = {"module": g.layers[0], "keep": [i for i in range(g.size) if i not in set(g.remove)],
                                      "in_features": g.size}
        return step

    def apply(self, model: nn.Module, example_inputs=None) -> nn.Module:
        """Perform the plan on ``model`` in place and return it.

        ``model`` is the model the plan was made on or a fresh instance of the same architecture (same
        layer names and shapes); a layer that does not fit raises :class:`CheckpointError` naming it. With
        ``example_inputs`` the pruned model is run once and must give outputs of unchanged shapes.
        """
        from .api import output_shapes
        from .plan import _apply_step, _checked_keeps, _layer
        from .remove import apply_keeps

        if not isinstance(model, nn.Module):
            raise ConfigError(f"Plan.apply needs a torch.nn.Module, got {type(model).__name__}")
        before = output_shapes(model, example_inputs) if example_inputs is not None else None
        step = self.step()
        if self.granularity == "channel":
            keeps = {name: _checked_keeps(_layer(model, name, "modules"), name, entry)
                     for name, entry in step["modules"].items()}
            record = empty_plan()
            try:
                apply_keeps(model, keeps, record)
            except PruningError:
                raise
            except Exception as exc:
                raise CheckpointError(f"the plan's layers do not fit this model ({type(exc).__name__}: {exc}); "
                                      "apply it to the architecture it was made on") from exc
            for key in ("modules", "params"):
                step[key] = record[key]
            _apply_step(model, {"version": PLAN_VERSION, "attributes": step["attributes"]})
        else:
            _apply_step(model, step)
        if example_inputs is not None:
            after = output_shapes(model, example_inputs, check=True)
            if before != after:
                raise PruningError(f"pruning changed the output shapes {before} -> {after}; please report this model")
        set_plan(model, merge_plans(get_plan(model), step))
        return model

    def _removed_atoms(self) -> set:
        atoms = self._layout["group_atoms"]
        return {int(atoms[g.index][u]) for g in self.groups for u in g.remove}

    def _keep_masks(self) -> Dict[str, np.ndarray]:
        """Per layer axis (``"module\x00kind"``): which of its positions this plan keeps."""
        removed = self._removed_atoms()
        gone = np.fromiter(removed, dtype=np.int64, count=len(removed))
        return {key: ~np.isin(np.asarray(atoms, dtype=np.int64), gone) for key, atoms in self._layout["members"].items()}

    def _keeps(self) -> Dict[str, Dict[str, np.ndarray]]:
        """module -> axis kind -> kept positions, for every axis that loses at least one position."""
        out: Dict[str, Dict[str, np.ndarray]] = {}
        for key, keep in self._keep_masks().items():
            if not keep.all():
                module, kind = key.split("\x00")
                out.setdefault(module, {})[kind] = np.nonzero(keep)[0]
        return out

    def _attributes(self) -> List[Dict[str, Any]]:
        removed = self._removed_atoms()
        out = []
        for patch in self._layout["patches"]:
            kept = sum(a not in removed for a in patch["atoms"])
            if kept != len(patch["atoms"]):
                out.append({"module": patch["module"], "attr": patch["attr"], "value": int(kept)})
        return sorted(out, key=lambda u: (u["module"], u["attr"]))

    # --- showing and saving ---------------------------------------------------------------------------

    def rows(self) -> List[Dict[str, Any]]:
        """One JSON-able row per group: index, kind, layers, size, removed, kept, left_out reason."""
        return [{"group": g.index, "kind": g.kind, "layers": g.layers, "size": g.size, "remove": len(g.remove),
                 "keep": g.kept, "left_out": g.reason} for g in self.groups]

    def table(self, *, all_groups: bool = True, width: int = 60) -> str:
        """The plan as a text table (groups, layers, size -> kept) with the predicted totals below."""
        head = ("group", "layers", UNITS.get(self._unit_kind(), "units"), "remove", "left out / frozen")
        rows = []
        for g in self.groups:
            if not all_groups and not g.remove:
                continue
            layers = ", ".join(g.layers) if g.kind != "blocks" else f"{len(g.layers)} blocks"
            if len(layers) > width:
                layers = layers[: width - 3] + "..."
            note = g.reason or (f"{len(g.frozen)} frozen" if g.frozen else "")
            rows.append((str(g.index), layers, str(g.size), f"{len(g.remove)} -> {g.kept}", note))
        if self.granularity == "block" and self.groups:
            g = self.groups[0]
            rows += [("", f"  {name}", "", "removed" if i in set(g.remove) else "kept", "")
                     for i, name in enumerate(g.layers)]
        widths = [max(len(head[i]), *(len(r[i]) for r in rows)) if rows else len(head[i]) for i in range(len(head))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]
        p = self.predicted()
        lines.append("")
        lines.append(f"params {p['params_before']:,} -> {p['params_after']:,} "
                     f"({_pct(p['params_after'], p['params_before'])}), MACs {p['macs_before']:,} -> "
                     f"{p['macs_after']:,} ({_pct(p['macs_after'], p['macs_before'])})")
        return "\n".join(lines)

    def _unit_kind(self) -> str:
        return {"channel": "channels", "block": "blocks", "input": "inputs"}[self.granularity]

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        p = self.predicted()
        return (f"Plan(granularity={self.granularity!r}, groups={len(self.groups)}, "
                f"removing={sum(len(g.remove) for g in self.groups)}, params {p['params_before']} -> "
                f"{p['params_after']}, macs {p['macs_before']} -> {p['macs_after']})")

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able form: the editable plan plus the step the model and checkpoint record (``step``)."""
        return {"format": PLAN_FORMAT, "format_version": PLAN_FORMAT_VERSION, "granularity": self.granularity,
                "spec": self.spec, "groups": [g.to_dict() for g in self.groups], "layout": self._layout,
                "predicted": self.predicted(), "step": self.step()}

    def to_json(self, indent: Optional[int] = None) -> str:
        """The plan as JSON text (write it with ``Path(p).write_text(plan.to_json())``; read with :meth:`from_json`)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Plan":
        """A plan from :meth:`to_dict` output; anything else raises :class:`CheckpointError`."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise CheckpointError("not a prunekit plan (no 'format': 'prunekit-plan'); a plan made with "
                                  "prunekit.plan(...).to_json() is expected")
        if data.get("format_version") != PLAN_FORMAT_VERSION:
            raise CheckpointError(f"plan format version {data.get('format_version')!r} is not supported "
                                  f"(this prunekit reads version {PLAN_FORMAT_VERSION})")
        granularity = data.get("granularity")
        if granularity not in ("channel", "block", "input"):
            raise CheckpointError(f"the plan's granularity {granularity!r} is not a structured granularity")
        layout = data.get("layout")
        if not isinstance(layout, dict):
            raise CheckpointError("the plan has no 'layout'; the plan is damaged")
        groups = [PlanGroup.from_dict(g) for g in data.get("groups") or []]
        if granularity == "channel" and len(layout.get("group_atoms", [])) != len(groups):
            raise CheckpointError("the plan's groups and layout disagree; the plan is damaged")
        plan = cls(granularity, groups, dict(data.get("spec") or {}), layout)
        for g in plan.groups:  # the same checks an edit gets
            for u in g.remove:
                if not 0 <= u < g.size:
                    raise CheckpointError(f"the plan removes unit {u} of group {g.index}, which has {g.size}")
        return plan

    @classmethod
    def from_json(cls, text_or_path: str) -> "Plan":
        """A plan from JSON text or from a file holding it."""
        text = text_or_path
        if not text.lstrip().startswith("{"):
            try:
                text = Path(text_or_path).read_text(encoding="utf-8")
            except OSError as exc:
                raise CheckpointError(f"cannot read plan file {text_or_path!r}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"the plan is not valid JSON ({exc})") from None
        return cls.from_dict(data)


def _pct(after: float, before: float) -> str:
    return f"{after / before:.1%}" if before else "n/a"

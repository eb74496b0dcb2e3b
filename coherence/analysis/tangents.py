"""Batch JVPs J v for many tangents v: the JVP graph traced once per model structure, then split.

Why not ``torch.func.linearize``: it traces the forward-and-tangent graph with the primal
values (θ, x) baked in as constants, so every (checkpoint, batch) pays a fresh trace (≈ 45
batch forwards for the demo UNet, ≈ 110 for the demo ViT: Python dispatch, not arithmetic),
and in torch 2.13 its constant folding turns the built-in circular pad into an uninitialised
buffer. Here the JVP of f(θ, x) is traced ONCE per model structure and input shape with θ, the
buffers, x and v all as graph inputs (functionalised: no in-place ops), and the graph is split
by dependence on v:

- the *primal* part (everything that does not depend on v: the forward, normalisation
  statistics, activation derivatives) runs once per bound (θ, x) and its boundary values are
  kept;
- the *tangent* part runs per tangent, ≈ two batch forwards of arithmetic.

Programs are cached by structure (module classes, repr and plain attributes, parameter and
buffer names, shapes, strides and dtypes, input shape, strides, dtype and device), so later
checkpoints of the same architecture and later batches reuse the trace. A program is only as
good as its key: Python state the key cannot see (a list- or object-valued attribute, a
global) is replayed with the traced value, which is why ``BatchJacobian`` checks the first
product of every binding against plain ``torch.func.jvp``. Models fake tensors cannot follow
(data-dependent control flow, tensor attributes that are neither parameters nor buffers)
raise TraceError and are remembered as untraceable.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, fx, nn
from torch.func import functional_call, functionalize
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.dialect.common.cse_pass import CSEPass
from torch.overrides import TorchFunctionMode

if TYPE_CHECKING:
    from coherence.analysis.autodiff import FlatModel

_CACHE_SIZE = 4  # programs kept per process (a graph of a few thousand nodes each)


def _wrap_pad(x: Tensor, pad: Sequence[int]) -> Tensor:
    """Circular padding written with slices and cat (no in-place writes): pairs in ``pad`` run
    from the last dimension backwards, as in ``F.pad``. Same values as mode="circular"."""
    for i in range(len(pad) // 2):
        dim = x.ndim - 1 - i
        before, after = pad[2 * i], pad[2 * i + 1]
        size = x.shape[dim]
        head = x.narrow(dim, size - before, before)
        tail = x.narrow(dim, 0, after)
        x = torch.cat([head, x, tail], dim=dim)
    return x


class _FunctionalCircularPad(TorchFunctionMode):
    """Route F.pad(mode="circular") to ``_wrap_pad`` while tracing.

    Why: the built-in circular pad writes into slices of a ``new_empty`` buffer; traced and
    constant-folded (torch 2.13 ``linearize``) that buffer came back uninitialised. The cat
    form traces to plain, pure ops whatever the later graph passes do.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is torch.nn.functional.pad:
            x, pad = args[0], list(args[1] if len(args) > 1 else kwargs["pad"])
            mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
            if mode == "circular" and all(
                0 <= p <= x.shape[-1 - i // 2] for i, p in enumerate(pad)
            ):
                return _wrap_pad(x, pad)
        return func(*args, **kwargs)


@contextlib.contextmanager
def quiet_forward_ad() -> Iterator[None]:
    """Silence torch's one-time deprecation notice: it loads its forward-AD decompositions
    through torch.jit.script on first use (plain jvp or tracing alike)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
        warnings.filterwarnings("ignore", message="Attempted to insert a get_attr")
        yield


class TraceError(RuntimeError):
    """torch could not trace the model's JVP (plain jvp still works)."""


def _mutates(node: fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return node.op == "call_function" and schema is not None and schema.is_mutable


def _keep(node: fx.Node) -> bool:
    """Dead-code elimination keeps inputs, outputs and mutations; everything else is pure.
    (fx's default also keeps aten's forward-AD shape assertions, hundreds of no-op nodes.)"""
    return node.op in ("placeholder", "output") or _mutates(node)


@dataclass(frozen=True)
class TangentProgram:
    """The traced JVP of f(θ, x), split by dependence on the tangent.

    ``primal(θ, x, *constants)`` → boundary values; ``tangent(*boundary, v)`` → J v.
    The byte counts come from the trace's shapes (no tensor is allocated to count them), for
    the cost estimate: what a binding keeps, and what one product needs on top of it.
    """

    primal: fx.GraphModule
    tangent: fx.GraphModule
    output_is_boundary: bool  # J v does not depend on v (e.g. J = 0): copy before returning
    boundary_bytes: int = 0  # primal values a binding keeps (storage of the inputs excluded)
    tangent_bytes: int = 0  # the peak of one product's values beyond them, output included

    def bind(self, fm: FlatModel, inputs: Tensor) -> Callable[[Tensor], Tensor]:
        """J v at (fm.theta, inputs) for any v [P]; runs the primal part now (no grad).

        The boundary values are kept for the binding's lifetime (about one batch's
        activations) and may alias ``inputs`` and the module's buffers; nothing writes to them.
        """
        with torch.no_grad():
            boundary = self.primal(fm.theta, inputs, *fm.constants.values())

        def push(tangent: Tensor) -> Tensor:
            with torch.no_grad():
                out = self.tangent(*boundary, tangent)
            return out.clone() if self.output_is_boundary else out

        return push


def _storage(node: fx.Node) -> torch.UntypedStorage | None:
    """The (fake) storage of a node's traced value; views share their base's."""
    value = node.meta.get("val")
    return value.untyped_storage() if isinstance(value, Tensor) else None


def _kept_bytes(values: Sequence[fx.Node], inputs: Sequence[fx.Node]) -> int:
    """Bytes of the distinct storages of ``values`` that are not storages of ``inputs``."""
    shared = {id(s) for s in map(_storage, inputs) if s is not None}
    kept: dict[int, int] = {}
    for storage in map(_storage, values):
        if storage is not None and id(storage) not in shared:
            kept[id(storage)] = storage.nbytes()
    return sum(kept.values())


def _peak_bytes(graph: fx.Graph) -> int:
    """The most bytes a run of ``graph`` holds at once beyond its inputs: each new storage from
    the node that creates it to the last use of the last node that refers to it (the code fx
    generates frees a value after its last use; outputs live to the end)."""
    nodes = list(graph.nodes)
    last_use = {node: i for i, user in enumerate(nodes) for node in user.all_input_nodes}
    inputs = {id(s) for n in nodes if n.op == "placeholder" and (s := _storage(n)) is not None}
    holders: dict[int, set[fx.Node]] = {}
    sizes: dict[int, int] = {}
    live = peak = 0
    for i, node in enumerate(nodes):
        storage = _storage(node) if node.op != "placeholder" else None
        if storage is not None and id(storage) not in inputs:
            if id(storage) not in holders:
                holders[id(storage)], sizes[id(storage)] = set(), storage.nbytes()
                live += sizes[id(storage)]
            holders[id(storage)].add(node)
        peak = max(peak, live)
        for used in node.all_input_nodes:
            key = id(s) if last_use[used] == i and (s := _storage(used)) is not None else None
            if key in holders:
                holders[key].discard(used)
                if not holders[key]:
                    del holders[key]
                    live -= sizes.pop(key)
    return peak


def _split(graph_module: fx.GraphModule) -> TangentProgram:
    """Cut the graph into the nodes that do not depend on the last input (v) and those that do.

    A primal node used by a tangent node becomes a boundary value: an output of the primal
    graph and an input of the tangent graph. The graph is functional (no mutations), so a
    boundary value is never written to by the tangent part and may be reused across tangents.
    """
    graph = graph_module.graph
    graph.eliminate_dead_code(is_impure_node=_keep)
    if any(_mutates(n) for n in graph.nodes):
        raise RuntimeError("the traced JVP graph still mutates tensors in place; cannot split")
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    tangent_input = placeholders[-1]
    depends = {tangent_input}
    for node in graph.nodes:
        if node.op not in ("placeholder", "output") and any(
            a in depends for a in node.all_input_nodes
        ):
            depends.add(node)
    output = next(n for n in graph.nodes if n.op == "output")
    boundary = [
        n
        for n in graph.nodes
        if n not in depends
        and n.op != "output"
        and any(u in depends or u is output for u in n.users)
    ]

    primal_graph, primal_env = fx.Graph(), {}
    for node in graph.nodes:
        if node not in depends and node.op != "output":
            primal_env[node] = primal_graph.node_copy(node, lambda a: primal_env[a])
    primal_graph.output(tuple(primal_env[n] for n in boundary))
    primal_graph.eliminate_dead_code(is_impure_node=_keep)

    tangent_graph, tangent_env = fx.Graph(), {}
    for node in [*boundary, tangent_input]:
        name = "tangent" if node is tangent_input else f"boundary_{len(tangent_env)}"
        tangent_env[node] = tangent_graph.placeholder(name)
        tangent_env[node].meta = dict(node.meta)  # its traced value: views of it allocate nothing
    for node in graph.nodes:
        if node in depends and node is not tangent_input:
            tangent_env[node] = tangent_graph.node_copy(node, lambda a: tangent_env[a])
    result = output.args[0]
    tangent_graph.output(fx.node.map_arg(result, lambda a: tangent_env[a]))
    root = graph_module
    return TangentProgram(
        fx.GraphModule(root, primal_graph),
        fx.GraphModule(root, tangent_graph),
        output_is_boundary=isinstance(result, fx.Node) and result not in depends,
        boundary_bytes=_kept_bytes(boundary, placeholders),
        tangent_bytes=_peak_bytes(tangent_graph),
    )


def _trace(fm: FlatModel, inputs: Tensor) -> TangentProgram:
    names = tuple(fm.constants)
    model, layout = fm.model, fm.layout

    def tangent_of_f(theta: Tensor, x: Tensor, *rest: Tensor) -> Tensor:
        *constants, tangent = rest

        def f(th: Tensor) -> Tensor:
            state = {**layout.unflatten(th), **dict(zip(names, constants, strict=True))}
            return functional_call(model, state, (x,))

        return torch.func.jvp(f, (theta,), (tangent,))[1]

    example = (fm.theta, inputs, *fm.constants.values(), torch.zeros_like(fm.theta))
    with quiet_forward_ad(), _FunctionalCircularPad():
        traced = make_fx(functionalize(tangent_of_f, remove="mutations"), tracing_mode="fake")(
            *example
        )
    # forward-mode rules recompute shared terms (e.g. GroupNorm's tangent mean, twice)
    return _split(CSEPass().call(traced).graph_module)


def trace_program(fm: FlatModel, inputs: Tensor) -> TangentProgram:
    """Trace J v for the model of ``fm`` at inputs of this shape (≈ 1 s for the demo UNet).

    The trace runs in its own short-lived thread. Why: in torch 2.13 a trace that fails
    half-way (a model fake tensors cannot follow, e.g. a tensor attribute that is neither a
    parameter nor a buffer) leaves functorch's dispatch keys excluded in the thread-local
    state, after which every torch.func call in that thread fails ("Cannot access storage of
    TensorWrapper"). A failure is raised here as TraceError; the caller's thread is untouched.
    """
    outcome: dict[str, object] = {}

    def work() -> None:
        try:  # the current CUDA device is thread-local: give the worker the inputs' one
            cuda = torch.cuda.device(inputs.device) if inputs.is_cuda else contextlib.nullcontext()
            with cuda:
                outcome["program"] = _trace(fm, inputs)
        except Exception as error:  # reported below, in the caller's thread
            outcome["error"] = f"{type(error).__name__}: {error}"

    worker = threading.Thread(target=work, name="coherence-tangent-trace")
    worker.start()
    worker.join()
    if "error" in outcome:
        reason = str(outcome["error"])[:300]
        raise TraceError(f"cannot trace the JVP of {type(fm.model).__qualname__}: {reason}")
    program = outcome["program"]
    assert isinstance(program, TangentProgram)
    return program


_PLAIN = (int, float, bool, str, type(None))


def _plain(value: object) -> object | None:
    """A hashable stand-in for a plain value or a tuple/list of them; None for anything else."""
    if isinstance(value, _PLAIN):
        return (type(value).__name__, value)
    if isinstance(value, tuple | list) and all(isinstance(v, _PLAIN) for v in value):
        return (type(value).__name__, tuple(value))
    return None


def _module_settings(module: nn.Module) -> tuple:
    """Every submodule's class and public plain attributes (e.g. an attention block's head
    count, which its repr does not show): values a trace bakes in as constants."""
    return tuple(
        (
            name,
            type(m).__qualname__,
            tuple(
                sorted(
                    (k, _plain(v))
                    for k, v in vars(m).items()
                    if not k.startswith("_") and _plain(v) is not None
                )
            ),
        )
        for name, m in module.named_modules()
    )


def _structure_key(fm: FlatModel, inputs: Tensor) -> tuple:
    model = fm.model
    return (
        type(model).__module__,
        type(model).__qualname__,
        repr(model),
        _module_settings(model),
        fm.layout.names,
        fm.layout.shapes,
        fm.theta.dtype,
        tuple((n, c.shape, c.stride(), c.dtype) for n, c in fm.constants.items()),
        inputs.shape,
        inputs.stride(),  # views in the graph are traced for this memory layout
        inputs.dtype,
        inputs.device,
    )


_programs: OrderedDict[tuple, TangentProgram] = OrderedDict()
_untraceable: dict[tuple, str] = {}  # key → why: not traced again in this process
_lock = threading.Lock()  # one trace at a time; the cache is shared by the process's threads


def cached_program(fm: FlatModel, inputs: Tensor, *, fresh: bool = False) -> TangentProgram:
    """The program for this model structure and input shape: from the per-process cache unless
    ``fresh`` (then re-traced and the cache entry replaced). Least recently used is dropped.
    A structure that failed to trace raises TraceError again without a new attempt."""
    key = _structure_key(fm, inputs)
    with _lock:
        if key in _untraceable:
            raise TraceError(_untraceable[key])
        if not fresh and key in _programs:
            _programs.move_to_end(key)
            return _programs[key]
        try:
            program = trace_program(fm, inputs)
        except TraceError as error:
            _untraceable[key] = str(error)
            raise
        _programs[key] = program
        while len(_programs) > _CACHE_SIZE:
            _programs.popitem(last=False)
        return program


def forget(fm: FlatModel, inputs: Tensor, why: str) -> None:
    """Drop this structure's program and never trace it again in this process (its traces
    disagree with plain jvp)."""
    key = _structure_key(fm, inputs)
    with _lock:
        _programs.pop(key, None)
        _untraceable[key] = why


def is_cached(fm: FlatModel, inputs: Tensor) -> bool:
    """Whether a program for this structure and input shape is already traced."""
    return _structure_key(fm, inputs) in _programs


def clear_programs() -> None:
    """Forget every traced program and every failure (tests; or after changing a model's code
    in place)."""
    with _lock:
        _programs.clear()
        _untraceable.clear()

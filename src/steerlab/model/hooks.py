"""Forward hooks on block outputs: the one place steerlab installs and removes them.

Every steerlab intervention (steering) and every read (activation capture) is a forward hook on a
module's output, usually a decoder block (layer L = output of block L = ``hidden_states[L + 1]``).
This module owns their registration; nothing else in steerlab calls ``register_forward_hook`` (nor
``register_forward_pre_hook``: :func:`input_hook`).

Hook lifecycle
--------------
1. **Install, context-managed.** :func:`output_hooks` (or :func:`install_output_hooks` for objects
   with their own ``__enter__``/``remove``, such as the Steerer) installs a group of
   ``(module, hook)`` pairs all at once: if installing any of them fails, those already installed
   are removed before the error propagates.
2. **Run first on the module.** On each module steerlab keeps ONE torch hook, a dispatcher
   registered with ``register_forward_hook(..., prepend=True)``, so it runs before every hook that
   others put on the module, whether they were installed before or after it. This matters for
   transformers ≥ 5, which records ``output_hidden_states`` (and attentions) with forward hooks
   installed on the decoder layers the first time they are requested, and kept from then on: a
   steering hook that ran after that recorder would change the logits but not the reported
   ``hidden_states[L + 1]``. With the dispatcher first, hidden states, steerlab's captures and
   logits agree. (A hook that someone installs later with ``prepend=True`` of its own still runs
   before steerlab's; torch's global hooks run before all module hooks.)
3. **Compose in installation order.** The dispatcher calls steerlab's hooks on the module in the
   order they were installed; each sees the output returned by the previous one (a hook returning
   ``None`` leaves the output unchanged). So nested steerers apply outer first, then inner, and a
   capture installed inside a steerer reads the steered output.
4. **Remove on every exit path.** Leaving the ``with`` block — normally, on an exception, or on
   ``KeyboardInterrupt`` — removes the group's hooks (``finally``); removal is idempotent. When a
   module's last steerlab hook is removed, its dispatcher is removed too, leaving the module's hook
   table as it was apart from what others added meanwhile.

Hooks have torch's forward-hook signature ``hook(module, inputs, output) -> new output | None``; for
decoder blocks ``output`` is the hidden state ``[batch, seq, d_model]`` or a tuple whose first item
is. A hook may raise to stop the forward pass (activation capture does, after the last layer it
needs); the group is still removed by its context manager.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch import nn

OutputHook = Callable[[nn.Module, tuple[Any, ...], Any], Any]

_lock = threading.RLock()


class _Dispatcher:
    """The single prepended torch hook on one module; runs steerlab's hooks in installation order."""

    def __init__(self, module: nn.Module) -> None:
        self.hooks: dict[int, OutputHook] = {}  # insertion-ordered: installation order
        self._next_id = 0
        self.handle = module.register_forward_hook(self._run, prepend=True)

    def _run(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
        for hook in list(self.hooks.values()):
            result = hook(module, inputs, output)
            if result is not None:
                output = result
        return output

    def add(self, hook: OutputHook) -> int:
        self._next_id += 1
        self.hooks[self._next_id] = hook
        return self._next_id


_dispatchers: weakref.WeakKeyDictionary[nn.Module, _Dispatcher] = weakref.WeakKeyDictionary()


class HookGroup:
    """Hooks installed together by :func:`install_output_hooks`; :meth:`remove` takes them all out.

    Also a context manager: ``with install_output_hooks(pairs): ...`` removes the group on exit.
    """

    def __init__(self) -> None:
        self._entries: list[tuple[nn.Module, int]] = []

    def _add(self, module: nn.Module, hook: OutputHook) -> None:
        with _lock:
            dispatcher = _dispatchers.get(module)
            if dispatcher is None:
                dispatcher = _dispatchers[module] = _Dispatcher(module)
            self._entries.append((module, dispatcher.add(hook)))

    def __len__(self) -> int:
        return len(self._entries)

    def remove(self) -> None:
        """Remove every hook of the group (idempotent); a module's dispatcher goes with its last hook."""
        with _lock:
            while self._entries:
                module, hook_id = self._entries.pop()
                dispatcher = _dispatchers.get(module)
                if dispatcher is None:
                    continue
                dispatcher.hooks.pop(hook_id, None)
                if not dispatcher.hooks:
                    dispatcher.handle.remove()
                    del _dispatchers[module]

    def __enter__(self) -> HookGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def install_output_hooks(pairs: Iterable[tuple[nn.Module, OutputHook]]) -> HookGroup:
    """Install forward hooks ``hook(module, inputs, output)`` on module outputs, now, all or none.

    Each hook runs before any non-steerlab hook on its module and after the steerlab hooks installed
    there earlier (see the module docstring). Returns the :class:`HookGroup` to ``remove()`` (or use
    it as a context manager). If installing any pair fails (including ``KeyboardInterrupt``), the
    hooks already installed are removed and the error propagates.
    """
    group = HookGroup()
    try:
        for module, hook in pairs:
            group._add(module, hook)
    except BaseException:
        group.remove()
        raise
    return group


@contextlib.contextmanager
def output_hooks(pairs: Iterable[tuple[nn.Module, OutputHook]]) -> Iterator[HookGroup]:
    """Context manager: :func:`install_output_hooks` on entry, removal on every exit path.

    with output_hooks([(lm.blocks[12], hook)]):
        lm.model(input_ids)
    """
    group = install_output_hooks(pairs)
    try:
        yield group
    finally:
        group.remove()


@contextlib.contextmanager
def input_hook(module: nn.Module, hook: Callable[[nn.Module, tuple[Any, ...]], Any]) -> Iterator[None]:
    """Context manager: a forward pre-hook ``hook(module, inputs) -> new inputs | None`` on ``module``,
    removed on every exit path (for reshaping what a module reads, e.g. the LM head)."""
    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def installed_hooks(model: nn.Module) -> int:
    """How many steerlab output hooks are installed on ``model`` and its submodules (0 when clean)."""
    with _lock:
        return sum(len(d.hooks) for m in model.modules() if (d := _dispatchers.get(m)) is not None)

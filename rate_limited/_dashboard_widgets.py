"""The ipywidgets pieces the dashboard (``rate_limited._dashboard``) is drawn with: the
lazy import with its install hint, a trait set only when it changes (each change is a
message to the browser), a resource's row, and publishing a display bundle.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

__all__ = ["GREY", "ResourceRow", "load_widgets", "publish", "set_line", "set_value"]

GREY = "color: var(--jp-ui-font-color2, #666)"


def load_widgets() -> Any:
    try:
        import ipywidgets
    except ImportError as exc:
        raise ImportError(
            "The notebook dashboard needs ipywidgets: pip install 'rate_limited[notebook]'"
        ) from exc
    return ipywidgets


def publish(data: dict[str, Any], display_id: str, *, update: bool = False) -> None:
    """Display a mime bundle in the current cell's output, or replace the outputs shown
    under ``display_id`` (IPython comes with ipywidgets)."""
    from IPython import display

    show: Callable[..., object] = display.update_display if update else display.display
    show(data, raw=True, display_id=display_id)


def set_value(widget: Any, name: str, value: Any) -> None:
    """Set a widget trait only if it changed: each change is a message to the browser."""
    if getattr(widget, name) != value:
        setattr(widget, name, value)


def set_line(widget: Any, text: str) -> None:
    """Set a line of text; an empty line is hidden rather than left as a blank gap."""
    set_value(widget, "value", text)
    set_value(widget.layout, "display", None if text else "none")


class ResourceRow:
    """One resource: its name, a bar of used + reserved against the quota, the numbers."""

    def __init__(self, widgets: Any, name: str, quota: float) -> None:
        self.name = name
        self.label = widgets.HTML(
            value=f"<code>{html.escape(name)}</code>", layout=widgets.Layout(width="190px")
        )
        self.bar = widgets.FloatProgress(
            value=0.0, min=0.0, max=quota, layout=widgets.Layout(width="260px")
        )
        self.text = widgets.HTML(value="")
        self.box = widgets.HBox([self.label, self.bar, self.text])

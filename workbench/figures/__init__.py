"""Paper figures from run tables: one style, vector export, sidecars with the plotted data.

Torch-free (the app imports it). A figure function shapes records into a :class:`Plot` (the exact
data drawn plus the drawing parameters); ``plot.figure(width)`` draws it in the workbench style;
:func:`render` gives PDF/SVG/PNG bytes (the app's download buttons) and :func:`write_plot` writes
the files and their sidecars. :func:`run_figures` picks every table's standard figure set from
:data:`FIGURE_SETS` (see ``registry.py``), falling back to generic figures by data shape.
"""

from workbench.figures import (circuit_curve, circuit_sets, edges, ioi_sets,  # noqa: F401
                               probe_sets,
                               pruning)
from workbench.figures.atlas import atlas_grid
from workbench.figures.text import attention_text, pattern_grid
from workbench.figures.bars import faithfulness_bars
from workbench.figures.export import (FORMATS, BrowserNotFound, close_browser, export_session,
                                      find_browser, open_browser, render, write_plot)
from workbench.figures.graph import circuit_graph, weighted_graph
from workbench.figures.grid import (attention_pattern, head_heatmap, heatmap_of_means,
                                    overlap_matrix)
from workbench.figures.lines import by_depth, distribution, dose_response, position_profile
from workbench.figures.plot import DRAWERS, Plot, load_plot
from workbench.figures.registry import (FIGURE_SETS, FigureOptions, RunSource, generic_figures,
                                        register_figure_set, run_figures, table_figures)
from workbench.figures.style import TEMPLATE, WIDTHS_IN

__all__ = [
    "DRAWERS", "FIGURE_SETS", "FORMATS", "TEMPLATE", "WIDTHS_IN", "BrowserNotFound",
    "atlas_grid", "attention_text", "pattern_grid",
    "FigureOptions", "Plot", "RunSource", "attention_pattern", "by_depth", "circuit_graph",
    "close_browser", "open_browser",
    "distribution", "dose_response", "export_session", "faithfulness_bars", "find_browser",
    "generic_figures",
    "head_heatmap", "heatmap_of_means", "load_plot", "overlap_matrix", "position_profile",
    "register_figure_set",
    "render", "run_figures", "table_figures", "weighted_graph", "write_plot",
]

"""mechscope.apps: entry points only — the ``mechscope`` CLI (`cli`), the demo, the Plotly feature
browser (`browser`) and graph viewer (`graph_viewer`), written as offline HTML (`html`)."""

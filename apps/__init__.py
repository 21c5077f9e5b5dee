"""mechscope.apps: entry points only — the ``mechscope`` CLI (`cli`, one module per subcommand in
`commands/`), benchmarks against other libraries (`bench/`), the Plotly feature browser (`browser`)
and graph viewer (`graph_viewer`), written as offline HTML (`html`). Nothing imports apps."""

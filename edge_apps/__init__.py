"""Camera pipeline and edge applications; see the edge_apps issue. Nothing here yet."""

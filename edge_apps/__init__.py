"""The real-time pipeline (sources -> preprocess -> infer on any runtime -> smooth -> events/overlay -> sinks)
behind `edgekit run`. The driver and attentiveness apps, face regions, MJPEG streaming and the meeting
server are still to come (see the edge_apps issues)."""

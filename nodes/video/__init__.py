"""The VIDEO type (PyAV) and ComfyUI's core video nodes: LoadVideo, SaveVideo, CreateVideo,
GetVideoComponents.  ``types`` holds the value, ``codec`` the PyAV plumbing, ``nodes`` the nodes."""

"""Video: frames in and out (PyAV), detection on every frame, and temporal (frame-differencing) detection.

``pip install 'mobilenet[video]'`` brings PyAV. ``frames`` reads and writes video, ``detector`` puts any
detector file behind one interface, ``temporal`` holds the frame-differencing detector, ``detect`` runs a
whole video and ``plot`` draws per-frame latency and changed area.
"""

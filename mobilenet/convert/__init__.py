"""Importers of published MobileNet v1 weights (Keras, TF Lite, TF-slim, Caffe, timm)."""

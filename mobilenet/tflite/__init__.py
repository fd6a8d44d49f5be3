"""Everything TF Lite, in one place, without TensorFlow.

=================  ==========================================================================================
``format``         read ``.tflite`` flatbuffers: tensors, constants, quantization, operators (``flexbuffers``:
                   custom options)
``grid``           TF Lite's uint8 grids and the interpreter's integer arithmetic on them; reading them off a file
``classifier``     import a MobileNet v1 classifier ``.tflite`` (float or uint8) into our layout
``ssd``            import the TF Object Detection API's SSD-MobileNet v1 ``detect.tflite`` into an ``SSD``
``fidelity``       run an import on the uint8 grids its file ran on (bit-exact with the interpreter)
``parity``         compare an import with the TF Lite interpreter (``ai-edge-litert``) on real photos
=================  ==========================================================================================

Nothing is imported here, so reading a file (``mobilenet.tflite.format``) loads neither torch models nor
the detector.
"""

"""Ramps, shared by the compiler and the runtime: their kinds, pooling, heads and ONNX graphs
(:mod:`.model`), head training (:mod:`.fit`), how much of a stream a ramp can release
(:mod:`.quality`) and refits on served samples (:mod:`.refit`)."""

"""Measuring fastcnn: the code behind ``fastcnn-bench`` and the pytest-benchmark suite in bench/.

- :mod:`.workload`: the network's op shapes (derived from the model), a general shape set, FLOP
  counts, and the op cases at those shapes;
- :mod:`.op_cases`: one small class per kind of op case (inputs, call, check against the NumPy
  reference, FLOPs or least bytes);
- :mod:`.roofline`: the machine's float32 FMA peak and memory bandwidth, measured with Numba, and
  what BLAS runs compared with the CPU;
- :mod:`.measurement`: timers, the CPU meter that sees other programs, and the op, training,
  evaluation and thread-scaling measurements;
- :mod:`.run`: one whole fastcnn-bench run; :mod:`.report` and :mod:`.charts`: its outputs;
- :mod:`.torch_compare`: ``--compare torch`` (PyTorch imported only there, only when asked);
- :mod:`.cli`: the command.
"""

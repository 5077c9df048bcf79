"""Readers for data that is not IDX: image folders (:mod:`.folder`), ``.npz`` arrays (:mod:`.arrays`)
and CIFAR-10 (:mod:`.cifar`). Each returns a :class:`fastcnn.data.Dataset` (see :mod:`.common`)."""

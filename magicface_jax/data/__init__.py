"""Datasets and input pipelines: the `synthetic_faces` and `magicface_pairs` tensorflow-datasets builders
(array_record files, read without TensorFlow) and the grain pipeline that feeds training on many hosts."""

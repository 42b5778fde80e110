"""Importers of the public knee datasets: each turns a dataset as its users download it into
a cohort catalog (and, where the readers cannot read the dataset's own files, converted
series beside the catalog). Their tasks and structure sets are in `catalogs/datasets.toml`.

- `mrnet`: MRNet (Stanford), `.npy` per plane and exam, three exam labels.
- `kneemri`: KneeMRI (Rijeka), pickled numpy volumes read by a restricted unpickler, ACL grade.
- `fastmri`: fastMRI knee (NYU) HDF5 reconstructions with fastMRI+ pathology labels.
- `skmtea`: SKM-TEA (Stanford) qDESS echoes, tissue masks, T2 maps, official splits.
- `oaizib`: OAI-ZIB (Zuse Institute Berlin) bone and cartilage masks on OAI DESS.
"""

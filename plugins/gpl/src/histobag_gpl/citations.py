"""BibTeX entries of the papers behind the models of histobag-gpl."""

from __future__ import annotations

CTRANSPATH = """\
@article{wang2022ctranspath,
  title     = {Transformer-based unsupervised contrastive learning for histopathological
               image classification},
  author    = {Wang, Xiyue and Yang, Sen and Zhang, Jun and Wang, Minghui and Zhang, Jing
               and Yang, Wei and Huang, Junzhou and Han, Xiao},
  journal   = {Medical Image Analysis},
  volume    = {81},
  pages     = {102559},
  year      = {2022},
  publisher = {Elsevier},
  doi       = {10.1016/j.media.2022.102559}
}"""

RETCCL = """\
@article{wang2023retccl,
  title     = {{RetCCL}: Clustering-guided contrastive learning for whole-slide image
               retrieval},
  author    = {Wang, Xiyue and Du, Yuexi and Yang, Sen and Zhang, Jun and Wang, Minghui
               and Zhang, Jing and Yang, Wei and Huang, Junzhou and Han, Xiao},
  journal   = {Medical Image Analysis},
  volume    = {83},
  pages     = {102645},
  year      = {2023},
  publisher = {Elsevier},
  doi       = {10.1016/j.media.2022.102645}
}"""

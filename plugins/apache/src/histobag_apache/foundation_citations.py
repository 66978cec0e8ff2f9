"""BibTeX entries of the pathology foundation models in this pack."""

VIRCHOW = """@article{vorontsov2024virchow,
  title = {A foundation model for clinical-grade computational pathology and rare cancers
           detection},
  author = {Vorontsov, Eugene and Bozkurt, Alican and Casson, Adam and Shaikovski, George and
            Zelechowski, Michal and Severson, Kristen and Zimmermann, Eric and Hall, James and
            Tenenholtz, Neil and Fusi, Nicolo and others},
  journal = {Nature Medicine},
  volume = {30},
  number = {10},
  pages = {2924--2935},
  year = {2024},
  doi = {10.1038/s41591-024-03141-0}
}"""

H_OPTIMUS_0 = """@software{hoptimus0,
  title = {H-optimus-0},
  author = {Saillard, Charlie and Jenatton, Rodolphe and Llinares-L{\\'o}pez, Felipe and
            Mariet, Zelda and Cahan{\\'e}, David and Durand, Eric and Vert, Jean-Philippe},
  url = {https://github.com/bioptimus/releases/tree/main/models/h-optimus/v0},
  year = {2024}
}"""

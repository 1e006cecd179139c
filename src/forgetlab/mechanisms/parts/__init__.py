"""Building blocks mechanisms share, none of them a registered mechanism itself.

* :mod:`.buffers` -- replay memories and the policies that fill them (replay, sleep, latent and
  generative replay);
* :mod:`.sampling` -- sequences sampled from the model (generative replay, sleep);
* :mod:`.importance` -- per-parameter importance (Fisher, path integral, output sensitivity) and
  the window sampling and FLOP rates data-driven hooks share;
* :mod:`.penalty` -- the quadratic penalty and the abstract base of EWC, SI and MAS;
* :mod:`.icarl` -- iCaRL's exemplar memory, loss and nearest-class-mean classifier, which the
  class-incremental scenario (:mod:`forgetlab.experiments.class_incremental`) assembles.
"""

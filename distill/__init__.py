"""The ``distill`` command and its jobs, one folder each (the top floor: it imports ``pipelines`` and ``prm``)."""

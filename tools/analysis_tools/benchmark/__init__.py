"""The study behind ``tools/benchmark.py`` (``make bench``): a study of this
repository, not part of the installed library.

Each section is measured by one module and rendered by another, from the
results dict alone (``--report-from`` redraws the page without measuring):

===================  ======================  ============================
section              measured by             rendered by
===================  ======================  ============================
speed, memory,       ``speed`` (``measure``, ``speed_report``,
training step        ``worker``,             ``batch_tta_report``
                     ``step_profile``)       (batch rows)
equal-budget AP      ``accuracy``            ``accuracy_report``
test-time aug.       ``tta``                 ``batch_tta_report``
deployment           ``deploy``              ``deploy_report``
                     (``large_image``,
                     ``runtime_profile``)
===================  ======================  ============================

Shared: ``machine`` (the repository root, the one logger, the machine table,
the peak-throughput estimate, paths as the page shows them), ``targets``
(every bound and why it is what it is), ``models`` (the compared models on
one shared backbone and neck), ``fmt`` and ``plots``; ``report`` writes the
page.
"""

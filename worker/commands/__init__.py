"""Operator commands: the ``crosssell`` CLI (``cli``) and what only a command runs:
``run`` (all processes in one), ``demo``, ``explain``, ``preview``, ``simulation``,
``status``, ``report``, ``migrate``, ``schemas``, ``progress``.

May import: every package. May be imported by: nothing in ``worker`` (the top layer).
"""

"""The pure decision core of crosssell.

Nothing in this package touches a database, the network or the clock: every function
takes the time it needs as an argument, so the rules can be tested exhaustively and run
identically in the worker, in ``crosssell simulate`` and in ``crosssell explain``.
"""

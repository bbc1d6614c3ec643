"""The judge: its prompt, its verdict formats, its card, reading its scores, their statistics,
and the judge as a reward function (``src.judging.genrm``: ``GenRM``, ``ServedGenRM``)."""

"""auto_LiRPA 0.3 made to run on current torch (:mod:`.compat`), and margin bounds through it (:mod:`.bounds`).

auto_LiRPA is optional: it is imported only when a bound is computed; without
it the ``lirpa`` certifiers do not apply and IBP training says how to install it.
"""

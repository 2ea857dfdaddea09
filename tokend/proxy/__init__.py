"""The proxy of SPEC §9: consumers' SDDC Manager API calls, forwarded with tokend's own token.

One job a module: :mod:`~tokend.proxy.canon` (which requests are forwarded, the canonical path),
:mod:`~tokend.proxy.headers` (which headers pass, both ways), :mod:`~tokend.proxy.forward` (the
forwarder: one connection pool per proxy, streaming, the 401 retry), :mod:`~tokend.proxy.seams`
(what the facade plugs in: local logins, who may forward) and :mod:`~tokend.proxy.app` (one
proxy's listener, its routes and its life). The facade's parts: :mod:`~tokend.proxy.localtoken`
(local tokens and session keys), :mod:`~tokend.proxy.users` (the bcrypt users file),
:mod:`~tokend.proxy.bruteforce` (login limits) and :mod:`~tokend.proxy.tlsgen` (the TCP
listener's certificate); :mod:`~tokend.proxy.facade` (the token endpoints and who may forward,
built on them) and :mod:`~tokend.proxy.tcp` (the HTTPS listener).
"""

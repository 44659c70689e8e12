"""OCPP 1.6J and 2.0.1: flexcharge as the charge points' server (CSMS).

`server.CsmsServer` serves both versions on one port, by websocket subprotocol, to the charge
points the station file declares; `connection` speaks each version's messages; `pile.OcppPile`
is one connector as the controller's `Pile`; `samples` turns MeterValues into numbers and
`profiles` setpoints into charging profiles.
"""

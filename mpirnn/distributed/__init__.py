"""The distributed runtime: communicators named for their purpose, tensor transport, agreement on
errors, the launcher guard, the watchdog, device binding and placement. Nothing here knows about
models; mpirnn.parallel builds strategies on top of it."""

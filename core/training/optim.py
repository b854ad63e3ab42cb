"""First-order update rules for the numpy models (the CS231n interface).

Each rule is `update(w, dw, config) -> (next_w, config)`: w and dw are arrays of
the same shape; config holds hyperparameters and per-parameter state (momentum,
moment estimates, step count) and is returned so the solver can keep it for the
next step. Updates are done in place on w and keep its dtype.
"""
import numpy as np

# each rule's default
DEFAULT_LEARNING_RATES = {"sgd": 1e-2, "sgd_momentum": 1e-2, "rmsprop": 1e-2, "adam": 1e-3}


def sgd(w, dw, config=None):
    """Vanilla SGD: w -= learning_rate * dw."""
    config = {} if config is None else config
    config.setdefault("learning_rate", DEFAULT_LEARNING_RATES["sgd"])
    w -= config["learning_rate"] * dw
    return w, config


def sgd_momentum(w, dw, config=None):
    """SGD with momentum: v = momentum * v - learning_rate * dw; w += v."""
    config = {} if config is None else config
    config.setdefault("learning_rate", DEFAULT_LEARNING_RATES["sgd_momentum"])
    config.setdefault("momentum", 0.9)
    v = config.get("velocity")
    if v is None:
        v = np.zeros_like(w)
    v *= config["momentum"]
    v -= config["learning_rate"] * dw
    w += v
    config["velocity"] = v
    return w, config


def rmsprop(w, dw, config=None):
    """RMSProp: a running average of squared gradients scales each step."""
    config = {} if config is None else config
    config.setdefault("learning_rate", DEFAULT_LEARNING_RATES["rmsprop"])
    config.setdefault("decay_rate", 0.99)
    config.setdefault("epsilon", 1e-8)
    cache = config.get("cache")
    if cache is None:
        cache = np.zeros_like(w)
    cache *= config["decay_rate"]
    cache += (1 - config["decay_rate"]) * dw * dw
    w -= config["learning_rate"] * dw / (np.sqrt(cache) + config["epsilon"])
    config["cache"] = cache
    return w, config


def adam(w, dw, config=None):
    """Adam with bias-corrected first and second moment estimates."""
    config = {} if config is None else config
    config.setdefault("learning_rate", DEFAULT_LEARNING_RATES["adam"])
    config.setdefault("beta1", 0.9)
    config.setdefault("beta2", 0.999)
    config.setdefault("epsilon", 1e-8)
    config.setdefault("t", 0)
    m = config.get("m")
    v = config.get("v")
    if m is None:
        m, v = np.zeros_like(w), np.zeros_like(w)
    b1, b2 = config["beta1"], config["beta2"]
    config["t"] += 1
    t = config["t"]
    m *= b1
    m += (1 - b1) * dw
    v *= b2
    v += (1 - b2) * dw * dw
    step_size = config["learning_rate"] / (1 - b1 ** t)
    denom = np.sqrt(v)
    denom /= np.sqrt(1 - b2 ** t)
    denom += config["epsilon"]
    w -= (step_size * m / denom).astype(w.dtype, copy=False)
    config["m"], config["v"] = m, v
    return w, config


def clip_and_decay(grads, params, grad_clip=None, weight_decay=0.0):
    """The gradients an update rule takes, as torch trains: clipped to a global L2 norm of at most
    grad_clip (torch.nn.utils.clip_grad_norm_: every gradient times grad_clip / (norm + 1e-6) when
    the norm of all of them together is larger), then weight_decay * w added to each (L2 weight
    decay, as torch.optim.Adam's weight_decay, on every weight).

    grads, params: name -> array of the same shapes -> name -> array (new arrays when changed).
    """
    if grad_clip is not None:
        norm = float(np.sqrt(sum(float(np.vdot(g, g)) for g in grads.values())))
        if norm > grad_clip:
            scale = grad_clip / (norm + 1e-6)
            grads = {k: g * np.asarray(scale, dtype=g.dtype) for k, g in grads.items()}
    if weight_decay:
        grads = {k: g + np.asarray(weight_decay, dtype=g.dtype) * params[k]
                 for k, g in grads.items()}
    return grads


UPDATE_RULES = {"sgd": sgd, "sgd_momentum": sgd_momentum, "rmsprop": rmsprop, "adam": adam}

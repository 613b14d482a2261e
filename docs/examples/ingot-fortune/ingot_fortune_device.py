"""The cookie backend of the fortune kind."""


class Cookie:
    def __init__(self, sayings):
        self.sayings = list(sayings)
        self.i = 0

    def next(self):
        self.i += 1
        return self.sayings[(self.i - 1) % len(self.sayings)]


def connect(ctx):
    if not ctx.keys["sayings"]:
        raise ValueError("no sayings given")
    return Cookie(ctx.keys["sayings"])

"""The oracle appliance: logs n sayings."""


class Oracle:
    def __init__(self, fortune, keys, log):
        self.fortune, self.keys, self.log = fortune, keys, log

    async def start(self):
        for _ in range(self.keys.n):
            self.log.info("oracle says", saying=self.fortune.next())

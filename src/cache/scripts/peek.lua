return {redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[2]) or ''}

"""aiokafka: produce and consume by assignment (non-flexible versions only)."""

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


def test_produce_and_consume(broker):
    async def main():
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(300):
                await producer.send_and_wait("aio", key=b"%d" % i, value=b"payload-%d" % i, partition=0)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition("aio", 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            got = []
            while len(got) < 300:
                batch = await consumer.getmany(tp, timeout_ms=5000)
                assert batch, f"no data after {len(got)}"
                got.extend((m.offset, m.value) for m in batch[tp])
            assert got == [(i, b"payload-%d" % i) for i in range(300)]
            assert (await consumer.end_offsets([tp]))[tp] == 300
        finally:
            await consumer.stop()

    asyncio.run(main())

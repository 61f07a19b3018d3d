"""Produces Stratify events to Kafka with the standard Python client.

usage: produce.py BROKERS TOPIC PARTITIONS EVENTS_JSONL [create|count|wrong]

With `create`, creates TOPIC with PARTITIONS partitions. With `count`,
prints how many records TOPIC holds (each must be keyed) and how many
distinct `seq` values they carry (membership changes). Each line
of EVENTS_JSONL is one event; the record key is its user id, partitioned by
kafka-python's default partitioner (murmur2, as Java's), so each user's
events stay in one partition, in order. With `wrong`, each record goes to
the partition after its key's (as a producer with another partitioner
would send it). Prints how many were acknowledged.
"""
import json
import sys

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

brokers, topic, partitions, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if len(sys.argv) > 5 and sys.argv[5] == "create":
    admin = KafkaAdminClient(bootstrap_servers=brokers, client_id="stratify-test-admin")
    admin.create_topics([NewTopic(name=topic, num_partitions=partitions, replication_factor=1)])
    admin.close()
    print("created", topic)
    sys.exit(0)
if len(sys.argv) > 5 and sys.argv[5] == "count":
    consumer = KafkaConsumer(topic, bootstrap_servers=brokers, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=5000)
    n, seqs = 0, set()
    for record in consumer:
        assert record.key, "a change without a key"
        change = json.loads(record.value)
        assert change["user_id"] == record.key.decode(), "keyed by user id"
        seqs.add(change["seq"])
        n += 1
    consumer.close()
    print(n, len(seqs))
    sys.exit(0)

producer = KafkaProducer(bootstrap_servers=brokers, acks="all", linger_ms=5)
wrong = len(sys.argv) > 5 and sys.argv[5] == "wrong"
if wrong:
    from kafka.partitioner.default import murmur2
futures = []
with open(path) as f:
    for line in f:
        try:
            key = json.loads(line)["user_id"].encode()
        except (ValueError, TypeError, KeyError):
            key = b"malformed"  # a bad record is sent as is: Stratify must reject it
        partition = None
        if wrong:
            partition = ((murmur2(key) & 0x7FFFFFFF) % partitions + 1) % partitions
        futures.append(producer.send(topic, key=key, value=line.strip().encode(), partition=partition))
producer.flush()
acked = sum(1 for fut in futures if fut.get(timeout=30) is not None)
producer.close()
print(acked)

"""Reads a Kafka topic from the beginning of every partition (no consumer group, nothing
committed) and prints one JSON line: the messages read and the distinct values of a field.

    kafka_topic.py count BROKER TOPIC EXPECT TIMEOUT_S [FIELD [IDS_OUT]]
        reads until EXPECT messages were read and 3 s pass without another, or TIMEOUT_S
        passes; prints {"messages": N, "distinct": D} (D counts FIELD's values in the JSON
        payloads, default request_id); with IDS_OUT, writes {value: times seen} there
    kafka_topic.py produce BROKER TOPIC MESSAGES_JSON
        sends [[key or null, value], ...] in order to partition 0 and waits for the broker
    kafka_topic.py committed BROKER TOPIC GROUP
        prints {"committed": {"<partition>": offset or null}, "end": {"<partition>": offset}}

Counting by reading matters: a broker's end offsets count record batches as it stores them,
which is not always the number of records (a gzip batch from Filebeat is one example).
"""
import json
import sys
import time

from kafka import KafkaConsumer, TopicPartition


def partitions(consumer, topic, timeout_s=20):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        time.sleep(0.2)
    raise SystemExit(f"topic {topic} has no partitions")


def count(broker, topic, expect, timeout_s, field="request_id", ids_out=None):
    consumer = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, group_id=None)
    tps = partitions(consumer, topic)
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    messages = 0
    values = {}
    deadline = time.time() + timeout_s
    last_new = time.time()
    while time.time() < deadline:
        batch = consumer.poll(timeout_ms=500, max_records=5000)
        got = 0
        for records in batch.values():
            for record in records:
                got += 1
                try:
                    doc = json.loads(record.value)
                except ValueError:
                    continue
                if isinstance(doc, dict) and field in doc:
                    key = str(doc[field])
                    values[key] = values.get(key, 0) + 1
        messages += got
        if got:
            last_new = time.time()
        elif messages >= expect and time.time() - last_new > 3:
            break
    if ids_out:
        with open(ids_out, "w") as out:
            json.dump(values, out)
    print(json.dumps({"messages": messages, "distinct": len(values)}))


def committed(broker, topic, group):
    consumer = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, group_id=group)
    tps = partitions(consumer, topic)
    ends = consumer.end_offsets(tps)
    print(json.dumps({
        "committed": {str(tp.partition): consumer.committed(tp) for tp in tps},
        "end": {str(tp.partition): ends[tp] for tp in tps},
    }))


def produce(broker, topic, messages):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    for key, value in json.loads(messages):
        producer.send(
            topic,
            value=value.encode(),
            key=None if key is None else key.encode(),
            partition=0,
        )
    producer.flush()
    print(json.dumps({"sent": len(json.loads(messages))}))


if __name__ == "__main__":
    if sys.argv[1] == "count":
        count(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), *sys.argv[6:8])
    elif sys.argv[1] == "produce":
        produce(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "committed":
        committed(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(__doc__)

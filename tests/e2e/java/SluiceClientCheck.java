import java.io.BufferedOutputStream;
import java.io.FileOutputStream;
import java.io.FileDescriptor;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.ExecutionException;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.CreateTopicsResult;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.ListConsumerGroupOffsetsSpec;
import org.apache.kafka.clients.admin.ListOffsetsResult;
import org.apache.kafka.clients.admin.ListOffsetsResult.ListOffsetsResultInfo;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.RecordsToDelete;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.CloseOptions;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.CooperativeStickyAssignor;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.consumer.OffsetAndTimestamp;
import org.apache.kafka.clients.consumer.RangeAssignor;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.Metric;
import org.apache.kafka.common.MetricName;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * Drives a broker with the official Java Kafka client for tests/e2e/test_java.py.
 *
 * <p>Usage: {@code SluiceClientCheck SCENARIO BOOTSTRAP [ARGS...]}. Prints what the client
 * saw as JSON lines on stdout (one object a line); the assertions are in pytest. Exits 1
 * with the exception on stderr when a client call throws (an expected error, such as
 * creating a topic twice, is caught and printed instead). Client log lines (WARN and
 * above) go to stderr.
 */
public final class SluiceClientCheck {
    private static final PrintStream OUT =
            new PrintStream(new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16), false,
                    StandardCharsets.UTF_8);
    private static final Duration TIMEOUT = Duration.ofSeconds(15);

    private SluiceClientCheck() {}

    public static void main(String[] args) {
        if (args.length < 2) {
            System.err.println("usage: SluiceClientCheck admin|idempotent|group|offsets|timestamps|sessions BOOTSTRAP [ARGS...]");
            System.exit(2);
        }
        String bootstrap = args[1];
        try {
            switch (args[0]) {
                case "admin":  // TOPIC
                    admin(bootstrap, args[2]);
                    break;
                case "idempotent":  // TOPIC PARTITIONS COUNT COMPRESSION
                    idempotent(bootstrap, args[2], Integer.parseInt(args[3]), Integer.parseInt(args[4]), args[5]);
                    break;
                case "group":  // TOPIC GROUP PARTITIONS TOTAL range|cooperative-sticky
                    group(bootstrap, args[2], args[3], Integer.parseInt(args[4]), Integer.parseInt(args[5]), args[6]);
                    break;
                case "offsets":  // TOPIC GROUP,GROUP,...
                    offsets(bootstrap, args[2], args[3].split(","));
                    break;
                case "timestamps":  // TOPIC COUNT COMPRESSION DELTA,DELTA,...
                    timestamps(bootstrap, args[2], Integer.parseInt(args[3]), args[4], args[5]);
                    break;
                case "sessions":  // TOPIC PARTITIONS COUNT
                    sessions(bootstrap, args[2], Integer.parseInt(args[3]), Integer.parseInt(args[4]));
                    break;
                default:
                    throw new IllegalArgumentException("unknown scenario " + args[0]);
            }
        } catch (Throwable e) {
            OUT.flush();
            System.err.println("FAILED " + args[0] + ": " + e);
            e.printStackTrace();
            System.err.flush();
            Runtime.getRuntime().halt(1);
        }
        OUT.flush();
        // Not System.exit: a client thread stuck in a broker call must not hold the JVM.
        System.err.flush();
        Runtime.getRuntime().halt(0);
    }

    // --- scenarios ----------------------------------------------------------------

    /** Topic administration: create (with configs), list, describe, cluster, create twice, configs. */
    static void admin(String bootstrap, String topic) throws Exception {
        try (Admin admin = Admin.create(adminProps(bootstrap))) {
            Map<String, String> configs = new TreeMap<>();
            configs.put("retention.ms", "3600000");
            configs.put("max.message.bytes", "2000000");
            CreateTopicsResult created =
                    admin.createTopics(List.of(new NewTopic(topic, 3, (short) 1).configs(configs)));
            created.all().get();
            emit("step", "create", "topic", topic, "partitions", created.numPartitions(topic).get(),
                    "replication_factor", created.replicationFactor(topic).get(),
                    "topic_id", String.valueOf(created.topicId(topic).get()));

            emit("step", "list", "topics", new TreeSet<>(admin.listTopics().names().get()));

            TopicDescription description = admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic);
            List<Object> partitions = new ArrayList<>();
            for (TopicPartitionInfo p : description.partitions()) {
                partitions.add(obj("partition", p.partition(), "leader", nodeId(p.leader()),
                        "replicas", nodeIds(p.replicas()), "isr", nodeIds(p.isr())));
            }
            emit("step", "describe_topic", "name", description.name(), "internal", description.isInternal(),
                    "topic_id", String.valueOf(description.topicId()), "partitions", partitions);

            DescribeClusterResult cluster = admin.describeCluster();
            List<Object> nodes = new ArrayList<>();
            for (Node n : cluster.nodes().get()) {
                nodes.add(obj("id", n.id(), "host", n.host(), "port", n.port()));
            }
            emit("step", "describe_cluster", "cluster_id", cluster.clusterId().get(),
                    "controller", nodeId(cluster.controller().get()), "nodes", nodes);

            try {
                admin.createTopics(List.of(new NewTopic(topic, 3, (short) 1))).all().get();
                emit("step", "create_again", "error", null);
            } catch (ExecutionException e) {
                emit("step", "create_again", "error", e.getCause().getClass().getName(),
                        "message", e.getCause().getMessage());
            }

            ConfigResource resource = new ConfigResource(ConfigResource.Type.TOPIC, topic);
            Config config = admin.describeConfigs(List.of(resource)).all().get().get(resource);
            for (ConfigEntry entry : config.entries()) {
                emit("step", "config", "name", entry.name(), "value", entry.value(),
                        "source", String.valueOf(entry.source()), "default", entry.isDefault(),
                        "read_only", entry.isReadOnly(), "sensitive", entry.isSensitive());
            }
        }
    }

    /**
     * Admin calls of tools and Kafka Streams: each GROUP commits offsets (alterConsumerGroupOffsets),
     * then one listConsumerGroupOffsets asks for all groups at once (OffsetFetch v8+ batches them);
     * deleteRecords moves partition 0's start; incrementalAlterConfigs sets cleanup.policy.
     */
    static void offsets(String bootstrap, String topic, String[] groups) throws Exception {
        createTopic(bootstrap, topic, 2);
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(producerProps(bootstrap))) {
            produceNumbered(producer, topic, 2, 0, 100);
        }
        try (Admin admin = Admin.create(adminProps(bootstrap))) {
            Map<String, ListConsumerGroupOffsetsSpec> specs = new TreeMap<>();
            for (int g = 0; g < groups.length; g++) {
                Map<TopicPartition, OffsetAndMetadata> commit = new HashMap<>();
                commit.put(new TopicPartition(topic, 0), new OffsetAndMetadata(10 + g, "g" + g));
                commit.put(new TopicPartition(topic, 1), new OffsetAndMetadata(20 + g));
                admin.alterConsumerGroupOffsets(groups[g], commit).all().get();
                specs.put(groups[g], new ListConsumerGroupOffsetsSpec());
            }
            Map<String, Map<TopicPartition, OffsetAndMetadata>> listed =
                    admin.listConsumerGroupOffsets(specs).all().get();
            for (Map.Entry<String, Map<TopicPartition, OffsetAndMetadata>> group : listed.entrySet()) {
                for (Map.Entry<TopicPartition, OffsetAndMetadata> e : group.getValue().entrySet()) {
                    emit("step", "committed", "group", group.getKey(), "partition", e.getKey().partition(),
                            "offset", e.getValue().offset(), "metadata", e.getValue().metadata());
                }
            }
            long low = admin.deleteRecords(Map.of(new TopicPartition(topic, 0), RecordsToDelete.beforeOffset(30)))
                    .lowWatermarks().get(new TopicPartition(topic, 0)).get().lowWatermark();
            ListOffsetsResult earliest = admin.listOffsets(Map.of(new TopicPartition(topic, 0), OffsetSpec.earliest()));
            emit("step", "deleted", "earliest", earliest.partitionResult(new TopicPartition(topic, 0)).get().offset(),
                    "result", low);
            ConfigResource resource = new ConfigResource(ConfigResource.Type.TOPIC, topic);
            admin.incrementalAlterConfigs(Map.of(resource, List.of(
                    new AlterConfigOp(new ConfigEntry("cleanup.policy", "compact"), AlterConfigOp.OpType.SET))))
                    .all().get();
            ConfigEntry policy = admin.describeConfigs(List.of(resource)).all().get().get(resource)
                    .get("cleanup.policy");
            emit("step", "altered", "cleanup.policy", policy.value(), "source", String.valueOf(policy.source()));
        }
    }

    /**
     * The idempotent producer (acks=all, compressed) sends COUNT keyed records over a topic
     * of PARTITIONS partitions; every ack is printed, then a consumer reads all back.
     */
    static void idempotent(String bootstrap, String topic, int partitions, int count, String compression)
            throws Exception {
        createTopic(bootstrap, topic, partitions);
        Properties props = producerProps(bootstrap);
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, compression);
        props.put(ProducerConfig.MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION, 5);
        props.put(ProducerConfig.LINGER_MS_CONFIG, 5);
        props.put(ProducerConfig.BATCH_SIZE_CONFIG, 1024);  // many batches, several in flight per partition
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            for (int i = 0; i < count; i++) {
                final int index = i;
                producer.send(new ProducerRecord<>(topic, bytes("key-" + i), bytes(value(i))), (metadata, error) -> {
                    if (error != null) {
                        emit("ack", index, "error", error.getClass().getName(), "message", error.getMessage());
                    } else {
                        emit("ack", index, "p", metadata.partition(), "o", metadata.offset());
                    }
                });
            }
            producer.flush();
            emitMetrics(producer.metrics(), "producer-metrics", "batch-size-avg", "records-per-request-avg",
                    "record-error-total", "record-retry-total", "compression-rate-avg");
        }

        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(consumerProps(bootstrap, null))) {
            List<TopicPartition> tps = new ArrayList<>();
            for (int p = 0; p < partitions; p++) {
                tps.add(new TopicPartition(topic, p));
            }
            consumer.assign(tps);
            consumer.seekToBeginning(tps);
            int seen = 0;
            long deadline = System.nanoTime() + TIMEOUT.toNanos();
            while (seen < count && System.nanoTime() < deadline) {
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(200))) {
                    emit("p", r.partition(), "o", r.offset(), "k", string(r.key()), "v", string(r.value()));
                    seen++;
                }
            }
            // Anything beyond COUNT would be a duplicate: one more poll to see it.
            for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(500))) {
                emit("p", r.partition(), "o", r.offset(), "k", string(r.key()), "v", string(r.value()));
            }
            Map<String, Object> ends = new TreeMap<>();
            consumer.endOffsets(tps, TIMEOUT).forEach((tp, o) -> ends.put(String.valueOf(tp.partition()), o));
            emit("end_offsets", ends);
        }
    }

    /**
     * Two members of group GROUP on a topic of PARTITIONS partitions: a processes a quarter of
     * TOTAL records (from the first half, produced in small batches and fetched a batch per
     * partition at a time, so a little of every partition) and pauses, b joins, a resumes once
     * the group is settled, the second half is produced, both poll until all are seen. Offsets
     * are committed only in onPartitionsRevoked (also called on close). Prints every record
     * seen, every assignment, revocation and commit, and at the end the group's committed
     * offsets.
     */
    static void group(String bootstrap, String topic, String group, int partitions, int total, String assignor)
            throws Exception {
        createTopic(bootstrap, topic, partitions);
        Properties producerProps = producerProps(bootstrap);
        producerProps.put(ProducerConfig.BATCH_SIZE_CONFIG, 1024);
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(producerProps)) {
            produceNumbered(producer, topic, partitions, 0, total / 2);

            Member a = new Member("a", bootstrap, topic, group, assignor);
            Member b = new Member("b", bootstrap, topic, group, assignor);
            try {
                a.consumer.subscribe(List.of(topic), a);
                long deadline = deadline();
                while (a.seen < total / 4 && System.nanoTime() < deadline) {
                    a.poll(100);
                }
                // a stops processing (it keeps polling: it stays in the group and rejoins).
                a.consumer.pause(a.consumer.assignment());
                emit("event", "b_joins", "a_seen", a.seen, "a_processed", offsetsOf(a.processed));
                b.consumer.subscribe(List.of(topic), b);
                deadline = deadline();
                while (System.nanoTime() < deadline && !settled(a, b, partitions)) {
                    a.poll(50);
                    b.poll(50);
                }
                emit("event", "settled", "a", partitionsOf(a.consumer.assignment()),
                        "b", partitionsOf(b.consumer.assignment()));
                a.consumer.resume(a.consumer.paused());
                produceNumbered(producer, topic, partitions, total / 2, total);
                deadline = deadline();
                while (a.seen + b.seen < total && System.nanoTime() < deadline) {
                    a.poll(50);
                    b.poll(50);
                }
                for (int i = 0; i < 5; i++) {  // nothing more may come
                    a.poll(100);
                    b.poll(100);
                }
            } finally {
                a.close();
                b.close();
            }
        }
        try (Admin admin = Admin.create(adminProps(bootstrap))) {
            Map<String, Object> committed = new TreeMap<>();
            admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get().forEach(
                    (tp, om) -> committed.put(String.valueOf(tp.partition()), om == null ? null : om.offset()));
            emit("committed", committed);
        }
    }

    /** A member of the group scenario; commits what it processed when partitions are revoked. */
    static final class Member implements ConsumerRebalanceListener {
        final String name;
        final KafkaConsumer<byte[], byte[]> consumer;
        final Map<TopicPartition, OffsetAndMetadata> processed = new HashMap<>();
        int seen;

        Member(String name, String bootstrap, String topic, String group, String assignor) {
            this.name = name;
            Properties props = consumerProps(bootstrap, group);
            props.put(ConsumerConfig.CLIENT_ID_CONFIG, "java-" + name);
            props.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, 50);
            props.put(ConsumerConfig.MAX_PARTITION_FETCH_BYTES_CONFIG, 1024);
            props.put(ConsumerConfig.PARTITION_ASSIGNMENT_STRATEGY_CONFIG,
                    assignor.equals("range") ? RangeAssignor.class.getName()
                            : assignor.equals("cooperative-sticky") ? CooperativeStickyAssignor.class.getName()
                            : assignor);
            this.consumer = new KafkaConsumer<>(props);
        }

        void poll(long millis) {
            for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(millis))) {
                emit("c", name, "p", r.partition(), "o", r.offset(), "v", string(r.value()));
                processed.put(new TopicPartition(r.topic(), r.partition()), new OffsetAndMetadata(r.offset() + 1));
                seen++;
            }
        }

        @Override
        public void onPartitionsRevoked(Collection<TopicPartition> revoked) {
            Map<TopicPartition, OffsetAndMetadata> offsets = new HashMap<>();
            for (TopicPartition tp : revoked) {
                OffsetAndMetadata done = processed.remove(tp);
                if (done != null) {
                    offsets.put(tp, done);
                }
            }
            emit("event", "revoked", "c", name, "partitions", partitionsOf(revoked));
            if (offsets.isEmpty()) {
                return;
            }
            try {
                consumer.commitSync(offsets, TIMEOUT);
                emit("event", "commit", "c", name, "offsets", offsetsOf(offsets));
            } catch (RuntimeException e) {
                emit("event", "commit_error", "c", name, "offsets", offsetsOf(offsets),
                        "error", e.getClass().getName(), "message", e.getMessage());
            }
        }

        @Override
        public void onPartitionsAssigned(Collection<TopicPartition> assigned) {
            emit("event", "assigned", "c", name, "partitions", partitionsOf(assigned));
        }

        @Override
        public void onPartitionsLost(Collection<TopicPartition> lost) {
            emit("event", "lost", "c", name, "partitions", partitionsOf(lost));
            for (TopicPartition tp : lost) {
                processed.remove(tp);
            }
        }

        void close() {
            consumer.close(CloseOptions.timeout(TIMEOUT));
            emit("event", "closed", "c", name, "seen", seen);
        }
    }

    static boolean settled(Member a, Member b, int partitions) {
        Set<TopicPartition> x = a.consumer.assignment();
        Set<TopicPartition> y = b.consumer.assignment();
        Set<TopicPartition> union = new java.util.HashSet<>(x);
        union.addAll(y);
        return !x.isEmpty() && !y.isEmpty() && x.size() + y.size() == partitions && union.size() == partitions;
    }

    /**
     * COUNT records with the timestamps BASE+i go compressed (COMPRESSION, in batches of many
     * records) to partition 0 of a new topic; then the earliest, latest and max-timestamp
     * offsets (Admin.listOffsets), offsetsForTimes(BASE+delta) for each delta of DELTAS, and a
     * read of everything back (offset, timestamp).
     */
    static void timestamps(String bootstrap, String topic, int count, String compression, String deltas)
            throws Exception {
        createTopic(bootstrap, topic, 1);
        long base = System.currentTimeMillis() / 1000 * 1000 - 3_600_000;
        emit("base", base);
        Properties props = producerProps(bootstrap);
        props.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, compression);
        props.put(ProducerConfig.LINGER_MS_CONFIG, 1000);
        props.put(ProducerConfig.BATCH_SIZE_CONFIG, 8192);
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            for (int i = 0; i < count; i++) {
                final int index = i;
                producer.send(new ProducerRecord<>(topic, 0, base + i, null, bytes(value(i) + " " + "x".repeat(40))),
                        (metadata, error) -> {
                            if (error != null) {
                                emit("ack", index, "error", error.getClass().getName(), "message", error.getMessage());
                            } else {
                                emit("ack", index, "o", metadata.offset(), "ts", metadata.timestamp());
                            }
                        });
            }
            producer.flush();
            emitMetrics(producer.metrics(), "producer-metrics", "batch-size-avg", "records-per-request-avg",
                    "request-total", "compression-rate-avg");
        }
        TopicPartition tp = new TopicPartition(topic, 0);
        try (Admin admin = Admin.create(adminProps(bootstrap))) {
            Map<String, OffsetSpec> specs = new TreeMap<>();
            specs.put("earliest", OffsetSpec.earliest());
            specs.put("latest", OffsetSpec.latest());
            specs.put("max_timestamp", OffsetSpec.maxTimestamp());
            for (Map.Entry<String, OffsetSpec> spec : specs.entrySet()) {
                ListOffsetsResultInfo info = admin.listOffsets(Map.of(tp, spec.getValue())).partitionResult(tp).get();
                emit("list_offsets", spec.getKey(), "offset", info.offset(), "timestamp", info.timestamp());
            }
        }
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(consumerProps(bootstrap, null))) {
            consumer.assign(List.of(tp));
            for (String d : deltas.split(",")) {
                long delta = Long.parseLong(d);
                Map<TopicPartition, OffsetAndTimestamp> found = consumer.offsetsForTimes(Map.of(tp, base + delta), TIMEOUT);
                OffsetAndTimestamp at = found.get(tp);
                emit("query", delta, "offset", at == null ? null : at.offset(),
                        "timestamp", at == null ? null : at.timestamp());
            }
            consumer.seekToBeginning(List.of(tp));
            int seen = 0;
            long deadline = deadline();
            while (seen < count && System.nanoTime() < deadline) {
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(200))) {
                    emit("o", r.offset(), "ts", r.timestamp(), "type", String.valueOf(r.timestampType()),
                            "v", string(r.value()));
                    seen++;
                }
            }
        }
    }

    // --- clients --------------------------------------------------------------------

    static Properties adminProps(String bootstrap) {
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, 10_000);
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, 15_000);
        return props;
    }

    static Properties producerProps(String bootstrap) {
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        props.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, 15_000);
        props.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, 10_000);
        props.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, 15_000);
        return props;
    }

    static Properties consumerProps(String bootstrap, String group) {
        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        props.put(ConsumerConfig.REQUEST_TIMEOUT_MS_CONFIG, 10_000);
        props.put(ConsumerConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, 15_000);
        if (group != null) {
            props.put(ConsumerConfig.GROUP_ID_CONFIG, group);
            props.put(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG, 10_000);
            props.put(ConsumerConfig.HEARTBEAT_INTERVAL_MS_CONFIG, 300);
        }
        return props;
    }

    /**
     * One consumer of many partitions, fetching over an incremental fetch session (the Java
     * client's default): it reads everything once, then rounds of records that go to one
     * partition at a time, so most fetches change one partition of many. Emits each record
     * as (partition, offset, value).
     */
    static void sessions(String bootstrap, String topic, int partitions, int count) throws Exception {
        createTopic(bootstrap, topic, partitions);
        Properties consumerProps = consumerProps(bootstrap, null);
        consumerProps.put(ConsumerConfig.FETCH_MAX_WAIT_MS_CONFIG, 100);
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(producerProps(bootstrap));
             KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(consumerProps)) {
            produceNumbered(producer, topic, partitions, 0, count);
            List<TopicPartition> all = new ArrayList<>();
            for (int p = 0; p < partitions; p++) {
                all.add(new TopicPartition(topic, p));
            }
            consumer.assign(all);
            consumer.seekToBeginning(all);
            int seen = drain(consumer, count);
            int next = count;
            for (int round = 0; round < 6; round++) {
                int partition = round % 3;
                List<java.util.concurrent.Future<?>> acks = new ArrayList<>();
                for (int i = 0; i < 20; i++, next++) {
                    acks.add(producer.send(new ProducerRecord<>(topic, partition, null, bytes(Integer.toString(next)))));
                }
                producer.flush();
                for (java.util.concurrent.Future<?> ack : acks) {
                    ack.get();
                }
                seen += drain(consumer, 20);
            }
            emit("event", "done", "seen", seen, "produced", next);
        }
    }

    /** Polls until `want` records arrived (or the timeout); emits each; returns how many. */
    static int drain(KafkaConsumer<byte[], byte[]> consumer, int want) {
        int got = 0;
        long deadline = deadline();
        while (got < want && System.nanoTime() < deadline) {
            for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(100))) {
                emit("p", r.partition(), "o", r.offset(), "v", new String(r.value(), StandardCharsets.UTF_8));
                got++;
            }
        }
        return got;
    }

    static void createTopic(String bootstrap, String topic, int partitions) throws Exception {
        try (Admin admin = Admin.create(adminProps(bootstrap))) {
            admin.createTopics(List.of(new NewTopic(topic, partitions, (short) 1))).all().get();
        }
    }

    /** Records FROM..TO-1: record i to partition i % PARTITIONS, value "i". */
    static void produceNumbered(KafkaProducer<byte[], byte[]> producer, String topic, int partitions, int from, int to)
            throws Exception {
        List<java.util.concurrent.Future<?>> acks = new ArrayList<>();
        for (int i = from; i < to; i++) {
            acks.add(producer.send(new ProducerRecord<>(topic, i % partitions, null, bytes(Integer.toString(i)))));
        }
        producer.flush();
        for (java.util.concurrent.Future<?> ack : acks) {
            ack.get();
        }
        emit("event", "produced", "from", from, "to", to);
    }

    static void emitMetrics(Map<MetricName, ? extends Metric> metrics, String group, String... names) {
        Map<String, Object> values = new TreeMap<>();
        for (Map.Entry<MetricName, ? extends Metric> m : metrics.entrySet()) {
            if (m.getKey().group().equals(group) && List.of(names).contains(m.getKey().name())) {
                values.put(m.getKey().name(), m.getValue().metricValue());
            }
        }
        emit("metrics", values);
    }

    // --- output -----------------------------------------------------------------------

    static String value(int i) {
        return "value-" + i;
    }

    static long deadline() {
        return System.nanoTime() + Duration.ofSeconds(20).toNanos();
    }

    static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    static String string(byte[] b) {
        return b == null ? null : new String(b, StandardCharsets.UTF_8);
    }

    static Object nodeId(Node n) {
        return n == null || n.isEmpty() ? null : n.id();
    }

    static List<Object> nodeIds(List<Node> nodes) {
        List<Object> ids = new ArrayList<>();
        for (Node n : nodes) {
            ids.add(n.id());
        }
        return ids;
    }

    static List<Integer> partitionsOf(Collection<TopicPartition> tps) {
        List<Integer> out = new ArrayList<>();
        for (TopicPartition tp : tps) {
            out.add(tp.partition());
        }
        out.sort(null);
        return out;
    }

    static Map<String, Object> offsetsOf(Map<TopicPartition, OffsetAndMetadata> offsets) {
        Map<String, Object> out = new TreeMap<>();
        offsets.forEach((tp, om) -> out.put(String.valueOf(tp.partition()), om.offset()));
        return out;
    }

    static Map<String, Object> obj(Object... kv) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) {
            m.put((String) kv[i], kv[i + 1]);
        }
        return m;
    }

    /** One JSON object a line, from alternating keys and values. */
    static void emit(Object... kv) {
        StringBuilder sb = new StringBuilder();
        json(sb, obj(kv));
        synchronized (OUT) {
            OUT.println(sb);
        }
    }

    static void json(StringBuilder sb, Object v) {
        if (v == null) {
            sb.append("null");
        } else if (v instanceof Number || v instanceof Boolean) {
            sb.append(v);
        } else if (v instanceof Map) {
            sb.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                if (!first) {
                    sb.append(',');
                }
                first = false;
                json(sb, String.valueOf(e.getKey()));
                sb.append(':');
                json(sb, e.getValue());
            }
            sb.append('}');
        } else if (v instanceof Collection) {
            sb.append('[');
            boolean first = true;
            for (Object o : (Collection<?>) v) {
                if (!first) {
                    sb.append(',');
                }
                first = false;
                json(sb, o);
            }
            sb.append(']');
        } else {
            String s = v.toString();
            sb.append('"');
            for (int i = 0; i < s.length(); i++) {
                char c = s.charAt(i);
                if (c == '"' || c == '\\') {
                    sb.append('\\').append(c);
                } else if (c < 0x20) {
                    sb.append(String.format("\\u%04x", (int) c));
                } else {
                    sb.append(c);
                }
            }
            sb.append('"');
        }
    }
}

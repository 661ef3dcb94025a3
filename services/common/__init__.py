"""What every service needs: Kafka clients, the Avro codec, settings, metrics and health, the stream loop."""

from services.ingest.backoff import Backoff, BackoffPolicy, parse_reset_header

X_DEFAULTS = BackoffPolicy()


def test_network_errors_back_off_linearly_up_to_the_cap() -> None:
    backoff = Backoff(X_DEFAULTS)
    waits = [backoff.after_network_error() for _ in range(70)]
    step = X_DEFAULTS.network_step_s
    assert waits[:3] == [step, 2 * step, 3 * step]
    assert max(waits) == X_DEFAULTS.network_max_s
    assert waits == sorted(waits)


def test_http_errors_back_off_exponentially_up_to_the_cap() -> None:
    backoff = Backoff(X_DEFAULTS)
    waits = [backoff.after_http_error() for _ in range(10)]
    start = X_DEFAULTS.http_start_s
    assert waits[:3] == [start, 2 * start, 4 * start]
    assert waits[-1] == X_DEFAULTS.http_max_s


def test_a_rate_limit_waits_for_the_reset_time_when_x_gives_one() -> None:
    backoff = Backoff(X_DEFAULTS)
    assert backoff.after_rate_limit(reset_epoch_s=1_000_042.0, now_epoch_s=1_000_000.0) == 42.0
    # a reset time already passed still waits one network step, never zero
    assert backoff.after_rate_limit(reset_epoch_s=999_999.0, now_epoch_s=1_000_000.0) == X_DEFAULTS.network_step_s
    # a reset far away is capped
    assert backoff.after_rate_limit(reset_epoch_s=1e12, now_epoch_s=0.0) == X_DEFAULTS.rate_limit_max_s


def test_a_rate_limit_without_reset_time_doubles_from_the_start() -> None:
    backoff = Backoff(X_DEFAULTS)
    start = X_DEFAULTS.rate_limit_start_s
    assert [backoff.after_rate_limit(None, 0.0) for _ in range(3)] == [start, 2 * start, 4 * start]


def test_a_working_connection_starts_every_schedule_over() -> None:
    backoff = Backoff(X_DEFAULTS)
    for _ in range(5):
        backoff.after_network_error()
        backoff.after_http_error()
        backoff.after_rate_limit(None, 0.0)
    backoff.reset()
    assert backoff.after_network_error() == X_DEFAULTS.network_step_s
    assert backoff.after_http_error() == X_DEFAULTS.http_start_s
    assert backoff.after_rate_limit(None, 0.0) == X_DEFAULTS.rate_limit_start_s


def test_reset_headers() -> None:
    assert parse_reset_header("1700000000") == 1_700_000_000.0
    assert parse_reset_header(None) is None
    assert parse_reset_header("soon") is None

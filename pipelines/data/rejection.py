"""The one exception that turns a record into a row of `rejected.parquet`."""


class RecordRejected(ValueError):
    """A record that cannot become a training row; the message is the reason written out.

    Readers and preprocessing raise it with a reason precise enough to act on
    ("truncated signal: data file holds 2500 of 5000 samples per lead"); prepare,
    serve and score catch it and account for the record instead of failing the job.
    """

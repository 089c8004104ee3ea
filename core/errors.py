"""The one error type for user mistakes: it names the field and the problem."""


class UserError(ValueError):
    """Bad input from a user (argument, file, model). The CLI prints it as one line and exits 2;
    the service stores it on the job as ``{"code": code, "message": str(self)}``."""

    def __init__(self, field: str, message: str, code: str = "invalid_input") -> None:
        self.field = field
        self.message = message
        self.code = code
        super().__init__(f"{field}: {message}")

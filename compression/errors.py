"""Every error the offline pipeline raises on purpose.

    CompressionError              base: the CLI prints it as one line and exits non-zero
    ├── RecipeError               a recipe file is missing, unreadable or fails validation
    ├── DataError                 a data file or column is unreadable, missing or empty
    ├── TeacherLoadError          the teacher path does not load as the declared kind
    ├── StudentSpecError          a student cannot be built from this teacher (e.g. layers out of range)
    ├── RegistryError             the registry or one of its bundles is unusable
    │   ├── ManifestError         a manifest is corrupt, or its files disagree with it
    │   └── UnknownModelError     no bundle matches the id or name asked for
    ├── ModelImportError          a model to import (`kdcanary models import`) is unusable as given
    │   ├── LabelMismatchError    its label names or count differ from its teacher's or the recipe data's
    │   ├── ModelSignatureError   its graph does not map input_ids [, attention_mask] (int64) to [batch, labels]
    │   └── ImportTokenizerError  its tokenizer is missing or does not load as a fast tokenizer
    └── ToleranceError            a stage's output breached its declared tolerance against its parent

Messages carry the numbers: "agreement 0.912 < 0.970 with parent abc123 on n=1280".
"""


class CompressionError(Exception):
    """Base of every deliberate error in compression/."""


class RecipeError(CompressionError):
    """The recipe is missing, unreadable or invalid; the message names the field."""


class DataError(CompressionError):
    """A data file or a column in it cannot be used; the message names the file and column."""


class TeacherLoadError(CompressionError):
    """The teacher path does not load as the declared kind."""


class StudentSpecError(CompressionError):
    """A student cannot be built as specified from this teacher."""


class RegistryError(CompressionError):
    """The registry or a bundle in it cannot be used."""


class ManifestError(RegistryError):
    """A bundle's manifest is corrupt, from an unknown schema version, or disagrees with its files."""


class UnknownModelError(RegistryError):
    """No bundle in the registry matches the id or name that was asked for."""


class ModelImportError(CompressionError):
    """A model trained elsewhere cannot be imported as given; nothing is registered."""


class LabelMismatchError(ModelImportError):
    """The imported model's label names differ from its teacher's or the recipe data's; both are named."""


class ModelSignatureError(ModelImportError):
    """The imported graph does not take int64 input_ids (and optionally attention_mask) and return
    [batch, labels] logits, checked by running one batch."""


class ImportTokenizerError(ModelImportError):
    """The imported model's tokenizer is missing, or does not load as a fast (tokenizer.json) tokenizer."""


class ToleranceError(CompressionError):
    """A stage's output breached its declared tolerance against its parent; it is not registered."""

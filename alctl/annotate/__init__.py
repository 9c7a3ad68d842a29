"""What a person sees and gives back: label files (`labels`: CSV / JSON of sample id and class, checked and joined
by id), Label Studio tasks and annotations (`labelstudio`), and the contact sheet of the images to label
(`sheet`). Pure of the engine: `alctl.engine.annotation` and `engine.commands` wire them to a task."""

"""Network definitions: targets (teachers), attentive students, the explainer and the surrogate that joins them."""

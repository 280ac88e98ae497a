"""Applications built from fpntools parts: one folder per problem."""

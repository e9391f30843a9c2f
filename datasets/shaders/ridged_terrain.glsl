// Ridged multifractal terrain (Musgrave 1994), lit from a random direction: a mountain-range height map.
float height(vec2 p) {
    float h = 0.0; float amp = 0.5;
    for (int i = 0; i < 6; i++) { h += amp * (1.0 - abs(2.0 * kd_noise(p) - 1.0)); p = mat2(1.7, 1.1, -1.1, 1.7) * p; amp *= 0.5; }
    return h * h;
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = fragCoord / iResolution.y * (1.5 + 4.0 * iParams[0].x) + iTime;
    float e = 0.01;
    float h = height(p);
    vec3 n = normalize(vec3(height(p - vec2(e, 0.0)) - height(p + vec2(e, 0.0)),
                            height(p - vec2(0.0, e)) - height(p + vec2(0.0, e)), 2.0 * e * (0.5 + iParams[0].y)));
    float sun = 6.2831 * iParams[0].z;
    float light = max(dot(n, normalize(vec3(cos(sun), sin(sun), 0.7))), 0.0);
    vec3 base = mix(kd_palette(0.2), vec3(0.95), smoothstep(0.5, 0.8, h));
    fragColor = vec4(base * (0.2 + 0.8 * light), 1.0);
}
